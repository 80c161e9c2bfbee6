"""`Qwen2Config`: Qwen2 as external code, written by following the "develop a new model" guide.

Qwen2 (Qwen team, Hugging Face `transformers/models/qwen2`) is the Llama architecture with three
differences, all of which torchformers' `LlamaConfig` can already express:

* biases on the q/k/v projections (none on the output projection): `qkv_has_bias=True`,
  `attn_proj_has_bias=False`;
* its own RoPE base: `theta=1000000.0` (`rope_theta` in Hugging Face's config.json);
* tied input/output embeddings on the small sizes (0.5B, 1.5B): `tie_word_embeddings`.

So, as the guide says for a model close to one in the library, the config reuses `LlamaConfig`
and only changes defaults (those of Qwen2-0.5B-Instruct) and the `model_type`. A Hugging Face
`config.json` of a Qwen2 checkpoint loads too (`Qwen2Config.from_pretrained(folder)`).

This file is not part of the library. A YAML registers it through `auto_register`:

    model:
      model_config:
        type: Qwen2Config
        auto_register: qwen2_config.Qwen2Config

and `run_mindformer.py --register_path research/qwen2` lets the registry import it.
"""

from __future__ import annotations

from typing import Any

from torchformers.models.configuration_utils import ConfigError
from torchformers.models.llama.llama_config import LlamaConfig

__all__ = ["Qwen2Config"]

# Hugging Face Qwen2 config.json keys with no counterpart in the Llama computation
_HF_ONLY = ("max_window_layers", "layer_types", "attention_dropout", "hidden_act", "use_cache", "transformers_version")


class Qwen2Config(LlamaConfig):
    """Qwen2 configuration: `LlamaConfig` with Qwen2's defaults (Qwen2-0.5B-Instruct).

    Args (besides every `LlamaConfig` argument):
        use_sliding_window / sliding_window: Qwen2's sliding-window attention switch; the released
            Qwen2 models do not use it, and `use_sliding_window=True` is refused.
    """

    model_type = "qwen2"
    _support_list = ["qwen2_0_5b_instruct", "qwen2_7b_instruct"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 896,
        num_layers: int = 24,
        num_heads: int = 14,
        n_kv_heads: int | None = 2,
        intermediate_size: int | None = 4864,
        seq_length: int = 32768,
        rms_norm_eps: float = 1e-6,
        theta: float = 1000000.0,
        bos_token_id: int = 151643,
        eos_token_id: int | list[int] = 151645,
        pad_token_id: int = 151643,
        qkv_has_bias: bool = True,
        attn_proj_has_bias: bool = False,
        tie_word_embeddings: bool = True,
        use_sliding_window: bool = False,
        sliding_window: int | None = None,
        **kwargs: Any,
    ) -> None:
        if use_sliding_window:
            raise ConfigError(
                "Qwen2Config.use_sliding_window: sliding-window attention is not implemented "
                "(the released Qwen2 models set it to false)"
            )
        for key in _HF_ONLY:
            kwargs.pop(key, None)
        # Hugging Face's Qwen2 config.json has no attention_bias key: the q/k/v biases are implied.
        kwargs.pop("attention_bias", None)
        super().__init__(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            n_kv_heads=n_kv_heads,
            intermediate_size=intermediate_size,
            seq_length=seq_length,
            rms_norm_eps=rms_norm_eps,
            theta=theta,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            qkv_has_bias=qkv_has_bias,
            attn_proj_has_bias=attn_proj_has_bias,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        # LlamaConfig gives a Hugging Face config's output projection the q/k/v bias setting
        # (Llama's attention_bias covers all four); Qwen2 has none on the output projection.
        self.qkv_has_bias = qkv_has_bias
        self.attn_proj_has_bias = attn_proj_has_bias
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
