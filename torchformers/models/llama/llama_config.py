"""`LlamaConfig`: every parameter and default of MindFormers r1.5 `mindformers/models/llama/llama_config.py`.

It also reads a Hugging Face Llama `config.json`: `num_hidden_layers`, `num_attention_heads`,
`num_key_value_heads`, `rope_theta`, `rope_scaling` / `rope_parameters`, `max_position_embeddings`,
`initializer_range`, `head_dim`, ... are translated into the MindFormers fields in `__init__`, so a
folder downloaded from the Hub and a MindFormers YAML give the same object.

Parameters that only mean something on Ascend (paged attention blocks, flash-attention and
fusion switches, parallel-layout hints, ...) are accepted, stored and written back, and have no effect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torchformers.generation.generation_config import token_id_list
from torchformers.models.configuration_utils import ConfigError, PretrainedConfig, convert_dtype
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.config import DictConfig
from torchformers.tools.register.template import STRICT_DEFAULTS

__all__ = ["DEFAULT_PARALLEL_CONFIG", "EXTEND_METHODS", "LlamaConfig"]

# MindFormers' default `TransformerOpParallelConfig` (`default_transformer_config`): what
# `LlamaConfig().parallel_config` holds; a given mapping overrides these keys
DEFAULT_PARALLEL_CONFIG: dict[str, Any] = dict(STRICT_DEFAULTS["parallel_config"])
_PARALLEL_DEGREES = ("data_parallel", "model_parallel", "context_parallel", "expert_parallel", "pipeline_stage",
                     "micro_batch_num")  # fmt: skip


def _parallel_config(value: Any) -> DictConfig:
    """`parallel_config` (None, a mapping, or an object with `to_dict`) -> an attribute-access object holding
    MindFormers' defaults overridden by the given keys."""
    if value is not None and not isinstance(value, Mapping) and callable(getattr(value, "to_dict", None)):
        value = value.to_dict()
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(
            f"LlamaConfig: parallel_config must be a mapping of data_parallel, model_parallel, ... "
            f"(or an object with to_dict()), got {type(value).__name__}"
        )
    merged = {**DEFAULT_PARALLEL_CONFIG, **dict(value or {})}
    for key in _PARALLEL_DEGREES:
        degree = merged[key]
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
            raise ConfigError(f"LlamaConfig: parallel_config.{key} is {degree!r}; expected a positive integer")
    config = DictConfig()
    config.update(merged)
    return config


# extend_method values (MindFormers spells "no scaling" as the string "None")
EXTEND_METHODS = ("None", "PI", "LINEAR", "NTK", "DYNAMIC_NTK", "LLAMA3", "YARN")

# Hugging Face rope_type -> MindFormers extend_method
_HF_ROPE_TYPES = {"default": "None", "linear": "LINEAR", "dynamic": "DYNAMIC_NTK", "llama3": "LLAMA3", "yarn": "YARN"}


@MindFormerRegister.register(MindFormerModuleType.CONFIG)
class LlamaConfig(PretrainedConfig):
    """Llama configuration (MindFormers names; Hugging Face names accepted as aliases).

    Args (the ones that change the computation on PyTorch):
        seq_length: training sample length (samples are `seq_length + 1` tokens) and the default
            generation limit.
        hidden_size, num_layers, num_heads, n_kv_heads (None: = num_heads), head_dim (None:
            hidden_size // num_heads; Hugging Face models such as Gemma-like variants set it).
        intermediate_size: FFN width; None computes it from multiple_of / ffn_dim_multiplier (7B: 11008).
        vocab_size, rms_norm_eps, theta (RoPE base), max_position_embedding (None: seq_length).
        extend_method: "None" | "PI" | "LINEAR" | "NTK" | "DYNAMIC_NTK" | "LLAMA3" | "YARN", with
            scaling_factor a float or a dict (LLAMA3: factor, low_freq_factor, high_freq_factor,
            original_max_position_embeddings; YARN: factor, original_max_position_embeddings,
            beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim, truncate).
        compute_dtype, param_init_type, layernorm_compute_type, rotary_dtype, embedding_init_type,
            softmax_compute_type, residual_dtype: "float16" | "bfloat16" | "float32" (torch dtypes
            once built). Set "float32" for CPU runs.
        qkv_has_bias, attn_proj_has_bias, tie_word_embeddings, init_method_std.
        pad_token_id, ignore_token_id, bos_token_id, eos_token_id (an int or a list of ints).
        top_k, top_p, do_sample, repetition_penalty, max_decode_length: generation defaults (copied into
            `GenerationConfig`, as MindFormers does).
        parallel_config: MindFormers' `TransformerOpParallelConfig` as an object with attribute access
            (`config.parallel_config.model_parallel`), its defaults overridden by the given mapping; the
            run's layout is read from the YAML's top-level `parallel_config`, not from here.
    use_past: `False` written in a predict YAML decodes without the KV cache (the launcher reads it
        from the YAML, since this default is False as in MindFormers); `generate(use_past=...)` decides.
    Accepted with no effect on PyTorch: batch_size (except as a predict-layout hint),
    moe_config, is_dynamic, use_rope_slice,
    use_flash_attention (SDPA picks flash attention itself), use_ring_attention,
    use_attn_mask_compression, use_eod_attn_mask_compression, parallel_optimizer,
    fine_grain_interleave, pp_interleave_num, offset, block_size, num_blocks, quant_config, llm_backend,
    fused_rms_norm, input_sliced_sig, rmsnorm_compute_2d, chunk_prefill, calculate_per_token_loss,
    pipeline_stage, return_hidden_states, qkv_concat (weights are always held as separate wq/wk/wv; fused
    checkpoints are split on load).
    """

    model_type = "llama"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "n_kv_heads",
        "rope_theta": "theta",
        "max_position_embeddings": "max_position_embedding",
        "initializer_range": "init_method_std",
    }
    _support_list = ["llama_7b", "llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b"]
    # Ascend-only switches a YAML may set: named in the launcher's one no-effect line when present
    no_effect_keys = (
        "is_dynamic", "block_size", "num_blocks", "use_flash_attention", "use_ring_attention",
        "use_attn_mask_compression", "use_eod_attn_mask_compression", "fine_grain_interleave", "pp_interleave_num",
        "offset", "use_rope_slice", "fused_rms_norm", "rmsnorm_compute_2d", "input_sliced_sig", "llm_backend",
        "chunk_prefill", "parallel_optimizer",
    )  # fmt: skip

    def __init__(
        self,
        batch_size: int = 1,
        seq_length: int = 2048,
        hidden_size: int = 4096,
        num_layers: int = 32,
        num_heads: int = 32,
        n_kv_heads: int | None = None,
        max_position_embedding: int | None = None,
        intermediate_size: int | None = None,
        vocab_size: int = 32000,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        rms_norm_eps: float = 1e-5,
        bos_token_id: int = 1,
        eos_token_id: int | list[int] = 2,
        pad_token_id: int = 0,
        ignore_token_id: int = -100,
        theta: float = 10000.0,
        compute_dtype: str = "float16",
        layernorm_compute_type: str = "float32",
        softmax_compute_type: str = "float32",
        rotary_dtype: str = "float32",
        param_init_type: str = "float16",
        residual_dtype: str | None = None,
        embedding_init_type: str | None = None,
        qkv_has_bias: bool = False,
        qkv_concat: bool = False,
        attn_proj_has_bias: bool = False,
        parallel_config: Any = None,
        moe_config: Any = None,
        use_past: bool = False,
        extend_method: str = "None",
        scaling_factor: float | dict = 1.0,
        is_dynamic: bool = False,
        use_rope_slice: bool = False,
        use_flash_attention: bool = False,
        use_ring_attention: bool = False,
        use_attn_mask_compression: bool = False,
        use_eod_attn_mask_compression: bool = False,
        parallel_optimizer: bool = False,
        fine_grain_interleave: int = 1,
        pp_interleave_num: int = 1,
        offset: int | list = 0,
        init_method_std: float = 0.01,
        checkpoint_name_or_path: str = "",
        repetition_penalty: float = 1.0,
        max_decode_length: int = 1024,
        block_size: int = 16,
        num_blocks: int = 512,
        top_k: int = 5,
        top_p: float = 1.0,
        do_sample: bool = True,
        quant_config: Any = None,
        tie_word_embeddings: bool = False,
        llm_backend: str = "",
        fused_rms_norm: bool = True,
        input_sliced_sig: bool = False,
        rmsnorm_compute_2d: bool = False,
        chunk_prefill: bool = False,
        calculate_per_token_loss: bool = False,
        pipeline_stage: dict | None = None,
        return_hidden_states: bool = False,
        head_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        # Hugging Face config.json names (the aliases in attribute_map would apply them after the
        # derived fields below are computed, so they are folded in first)
        hf_format = "num_hidden_layers" in kwargs or "rope_scaling" in kwargs or "rope_parameters" in kwargs
        num_layers = kwargs.pop("num_hidden_layers", num_layers)
        num_heads = kwargs.pop("num_attention_heads", num_heads)
        n_kv_heads = kwargs.pop("num_key_value_heads", n_kv_heads)
        max_position_embedding = kwargs.pop("max_position_embeddings", max_position_embedding)
        init_method_std = kwargs.pop("initializer_range", init_method_std)
        rope = kwargs.pop("rope_scaling", None) or kwargs.pop("rope_parameters", None)
        kwargs.pop("rope_parameters", None)
        theta = kwargs.pop("rope_theta", None) or (rope or {}).get("rope_theta") or theta
        if rope is not None:
            extend_method, scaling_factor = self._from_hf_rope(rope)
        if hf_format:
            # Hugging Face configs name their training dtype; on PyTorch we build float32 unless told
            for key in ("torch_dtype", "dtype"):
                kwargs.pop(key, None)
            # (an explicit "float16" cannot be told from the default here; pass "bfloat16" or set it after)
            compute_dtype = "float32" if compute_dtype == "float16" else compute_dtype
            param_init_type = "float32" if param_init_type == "float16" else param_init_type
            qkv_has_bias = kwargs.pop("attention_bias", qkv_has_bias)
            attn_proj_has_bias = qkv_has_bias
            if max_position_embedding is not None and "seq_length" not in kwargs:
                seq_length = min(seq_length, max_position_embedding)
            for key in (
                "hidden_act",
                "use_cache",
                "pretraining_tp",
                "attention_dropout",
                "mlp_bias",
                "transformers_version",
            ):
                kwargs.pop(key, None)
        super().__init__(checkpoint_name_or_path=checkpoint_name_or_path, **kwargs)

        self.batch_size = batch_size
        self.seq_length = seq_length
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.n_kv_heads = n_kv_heads
        self.max_position_embedding = max_position_embedding if max_position_embedding else seq_length
        self.multiple_of = multiple_of
        self.ffn_dim_multiplier = ffn_dim_multiplier
        self.intermediate_size = intermediate_size
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else 0
        self.ignore_token_id = ignore_token_id
        self.theta = float(theta)
        self.compute_dtype = convert_dtype(compute_dtype, "compute_dtype")
        self.layernorm_compute_type = convert_dtype(layernorm_compute_type, "layernorm_compute_type")
        self.softmax_compute_type = convert_dtype(softmax_compute_type, "softmax_compute_type")
        self.rotary_dtype = convert_dtype(rotary_dtype, "rotary_dtype")
        self.param_init_type = convert_dtype(param_init_type, "param_init_type")
        self.residual_dtype = convert_dtype(residual_dtype, "residual_dtype") or self.compute_dtype
        self.embedding_init_type = convert_dtype(embedding_init_type, "embedding_init_type") or self.param_init_type
        self.qkv_has_bias = qkv_has_bias
        self.qkv_concat = qkv_concat
        self.attn_proj_has_bias = attn_proj_has_bias
        self.parallel_config = _parallel_config(parallel_config)
        self.moe_config = moe_config
        self.use_past = use_past
        self.extend_method = str(extend_method)
        self.scaling_factor = scaling_factor
        self.is_dynamic = is_dynamic
        self.use_rope_slice = use_rope_slice
        self.use_flash_attention = use_flash_attention
        self.use_ring_attention = use_ring_attention
        self.use_attn_mask_compression = use_attn_mask_compression
        self.use_eod_attn_mask_compression = use_eod_attn_mask_compression
        self.parallel_optimizer = parallel_optimizer
        self.fine_grain_interleave = fine_grain_interleave
        self.pp_interleave_num = pp_interleave_num
        self.offset = offset
        self.init_method_std = init_method_std
        self.repetition_penalty = repetition_penalty
        self.max_decode_length = max_decode_length
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.top_k = top_k
        self.top_p = top_p
        self.do_sample = do_sample
        self.quant_config = quant_config
        self.tie_word_embeddings = tie_word_embeddings
        self.llm_backend = llm_backend
        self.fused_rms_norm = fused_rms_norm
        self.input_sliced_sig = input_sliced_sig
        self.rmsnorm_compute_2d = rmsnorm_compute_2d
        self.chunk_prefill = chunk_prefill
        self.calculate_per_token_loss = calculate_per_token_loss
        self.pipeline_stage = pipeline_stage
        self.return_hidden_states = return_hidden_states
        self.head_dim = head_dim
        self._validate()

    # ------------------------------------------------------------------ derived values
    @property
    def ffn_hidden_size(self) -> int:
        """FFN width: `intermediate_size`, or MindFormers' formula (7B: 4096 -> 11008)."""
        if self.intermediate_size:
            return int(self.intermediate_size)
        h = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            h = int((self.ffn_dim_multiplier + 0.01) * h)
        h = int(2 * h / 3)
        return self.multiple_of * math.ceil(h / self.multiple_of)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def eos_token_ids(self) -> list[int]:
        return token_id_list(self.eos_token_id)

    # ------------------------------------------------------------------ checks and translation
    def _validate(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "vocab_size", "seq_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"LlamaConfig.{key}: expected a positive integer, got {value!r}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"LlamaConfig: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}) "
                "unless head_dim is given"
            )
        if self.num_heads % self.kv_heads:
            raise ConfigError(
                f"LlamaConfig.n_kv_heads: num_heads ({self.num_heads}) must be a multiple of n_kv_heads "
                f"({self.n_kv_heads})"
            )
        if self.extend_method not in EXTEND_METHODS:
            raise ConfigError(
                f"LlamaConfig.extend_method: expected one of {list(EXTEND_METHODS)}, got {self.extend_method!r}"
            )
        if self.extend_method in ("LLAMA3", "YARN"):
            if not isinstance(self.scaling_factor, dict) or "factor" not in self.scaling_factor:
                raise ConfigError(
                    f"LlamaConfig.scaling_factor: extend_method {self.extend_method} needs a dict with 'factor' "
                    f"(and original_max_position_embeddings...), got {self.scaling_factor!r}"
                )
        if self.extend_method == "LLAMA3":
            missing = {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} - set(
                self.scaling_factor
            )
            if missing:
                raise ConfigError(f"LlamaConfig.scaling_factor: LLAMA3 scaling needs {sorted(missing)}")

    @staticmethod
    def _from_hf_rope(rope: dict) -> tuple[str, float | dict]:
        """Hugging Face `rope_scaling` / `rope_parameters` -> (extend_method, scaling_factor)."""
        rope = dict(rope)
        rope_type = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
        rope.pop("type", None)
        rope.pop("rope_theta", None)
        if rope_type not in _HF_ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling: rope_type {rope_type!r} is not supported (supported: {sorted(_HF_ROPE_TYPES)})"
            )
        method = _HF_ROPE_TYPES[rope_type]
        if method == "None":
            return method, 1.0
        if method in ("LINEAR", "DYNAMIC_NTK"):
            return method, float(rope["factor"])
        return method, rope

    def rope_scaling_dict(self) -> dict[str, Any]:
        """The RoPE settings in Hugging Face's `rope_parameters` form (used by tests and export)."""
        inverse = {v: k for k, v in _HF_ROPE_TYPES.items()}
        method = "LINEAR" if self.extend_method == "PI" else self.extend_method
        theta = self.theta * float(self.scaling_factor) if method == "NTK" else self.theta
        out: dict[str, Any] = {"rope_type": inverse.get(method, "default"), "rope_theta": theta}
        if isinstance(self.scaling_factor, dict):
            out.update(self.scaling_factor)
        elif method not in ("None", "NTK"):
            out["factor"] = float(self.scaling_factor)
        return out
