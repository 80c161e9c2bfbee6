"""Llama for causal language modelling, single-device PyTorch.

Structure and parameter names follow MindFormers `mindformers/models/llama/llama.py` (spec §5.4:
`model.tok_embeddings.embedding_weight`, `model.layers.N.attention.wq.weight`, `feed_forward.w1/w2/w3`,
`attention_norm`, `ffn_norm`, `model.norm_out.weight`, `lm_head.weight`); the computation follows
Meta's `llama/model.py` and Hugging Face's `LlamaForCausalLM` (rotate-half RoPE, RMSNorm in fp32,
SwiGLU, grouped-query attention through `scaled_dot_product_attention`), so Hugging Face weights load
with a rename only (`LLAMA_HF_KEY_MAP`). The file reads as gpt-fast's `model.py`: the layers, the
model, the model with its head. RoPE is in `models/rope.py`, the chunked head + loss in
`models/loss.py`. The model holds weights only: parallelism, compilation and CPU prepacking are applied
from outside, and generation passes its KV caches in (`generation/text_generator.py` keeps them).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchformers.generation.kv_cache import StaticKVCache
from torchformers.generation.paged_cache import PagedKVCache
from torchformers.generation.text_generator import generation_state
from torchformers.models.attention import causal_attention
from torchformers.models.llama.convert_weight import LLAMA_FUSED, LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.models.loss import linear_cross_entropy
from torchformers.models.modeling_utils import PretrainedModel
from torchformers.models.rope import FreqsMgr, apply_rope, rope_frequencies
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["LlamaForCausalLM", "LlamaModel", "linear_cross_entropy", "rope_frequencies"]


class LlamaRMSNorm(nn.Module):
    """`weight * (x * rsqrt(mean(x²) + eps))`, the normalisation computed in `compute_type` (fp32)."""

    def __init__(self, dim: int, eps: float, compute_type: torch.dtype, param_init_type: torch.dtype) -> None:
        super().__init__()
        self.eps, self.compute_type = eps, compute_type
        self.weight = nn.Parameter(torch.ones(dim, dtype=param_init_type))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.compute_type == self.weight.dtype:  # one fused op; the same values
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = F.rms_norm(x.to(self.compute_type), self.weight.shape, eps=self.eps)
        return self.weight * h.to(x.dtype)


class LlamaEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.embedding_weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.embedding_weight)  # (B, T) -> (B, T, hidden)


class LLamaAttention(nn.Module):
    # wq, wk and wv read the same input: `prepare_for_cpu_inference` may pack them into one matrix
    # `wqkv` computing `project_qkv` (method: (fused module, parts in output order))
    fused_projections = {"project_qkv": ("wqkv", ("wq", "wk", "wv"))}

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_heads, config.kv_heads, config.head_size
        hidden, dtype, bias = config.hidden_size, config.param_init_type, config.qkv_has_bias
        self.wq = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias, dtype=dtype)
        self.wk = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias, dtype=dtype)
        self.wv = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias, dtype=dtype)
        self.wo = nn.Linear(self.n_heads * self.head_dim, hidden, bias=config.attn_proj_has_bias, dtype=dtype)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.wq(x), self.wk(x), self.wv(x)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache_position: torch.Tensor | None = None,
        *,
        kv_cache: StaticKVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if getattr(kv_cache, "paged", False):  # the serving engine's paged cache stores and attends per request
            out = kv_cache.attention(q, k, v)  # (1, n_heads, N, hd)
            return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        if kv_cache is not None:  # generation: keys/values of all cached slots, (B, n_kv, L, hd)
            k, v = kv_cache.update(cache_position, k, v)
        if mask is None:  # plain causal: a blocked kernel on CPU, flash attention on GPU (see models/attention.py)
            out = causal_attention(q, k, v)  # (B, n_heads, T, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, hidden)


class LlamaFeedForward(nn.Module):
    # w1 and w3 read the same input: `prepare_for_cpu_inference` may pack them into one matrix `w13`
    fused_projections = {"project_gate_up": ("w13", ("w1", "w3"))}

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden, ffn, dtype = config.hidden_size, config.ffn_hidden_size, config.param_init_type
        self.w1 = nn.Linear(hidden, ffn, bias=False, dtype=dtype)  # gate
        self.w2 = nn.Linear(ffn, hidden, bias=False, dtype=dtype)  # down
        self.w3 = nn.Linear(hidden, ffn, bias=False, dtype=dtype)  # up

    def project_gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w1(x), self.w3(x)  # (B, T, ffn) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project_gate_up(x)
        return self.w2(F.silu(gate) * up)  # (B, T, hidden)


class LLamaDecodeLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        norm_args = (config.hidden_size, config.rms_norm_eps, config.layernorm_compute_type, config.param_init_type)
        self.attention_norm = LlamaRMSNorm(*norm_args)
        self.attention = LLamaAttention(config)
        self.ffn_norm = LlamaRMSNorm(*norm_args)
        self.feed_forward = LlamaFeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache_position: torch.Tensor | None = None,
        *,
        kv_cache: StaticKVCache | None = None,
    ) -> torch.Tensor:
        # the cache by keyword: tensor parallelism lays out the five positional inputs (PrepareModuleInput)
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache_position, kv_cache=kv_cache)
        return h + self.feed_forward(self.ffn_norm(h))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = LlamaEmbedding(config.vocab_size, config.hidden_size, config.embedding_init_type)
        self.layers = nn.ModuleList(LLamaDecodeLayer(config) for _ in range(config.num_layers))
        self.norm_out = LlamaRMSNorm(
            config.hidden_size, config.rms_norm_eps, config.layernorm_compute_type, config.param_init_type
        )
        self.freqs_mgr = FreqsMgr(config)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        input_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        kv_caches: list[StaticKVCache] | None = None,
    ) -> torch.Tensor:
        """Token ids `(B, T)` (or `input_embeds` `(B, T, hidden)`) -> hidden states `(B, T, hidden)`.

        A pipeline stage holds only some of the modules (torchtitan's way): without `tok_embeddings`
        the first argument already holds hidden states, without `norm_out` they come back unnormalised,
        and `layers` may be a `ModuleDict` keyed by the original layer numbers. Generation passes one
        KV cache per layer in `kv_caches`, written at slots `cache_position` `(T,)`.
        """
        if input_embeds is not None:
            h = input_embeds
        elif self.tok_embeddings is None:
            h = input_ids  # hidden states from the previous pipeline stage
        else:
            h = self.tok_embeddings(input_ids)  # (B, T, hidden)
        if position_ids is None:
            position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)  # (1, T)
        cos, sin, precision = self.rope_and_precision(position_ids, h.device.type)
        layers = self.layers.values() if isinstance(self.layers, nn.ModuleDict) else self.layers
        caches = kv_caches if kv_caches is not None else [None] * len(self.layers)
        with precision:
            for layer, kv_cache in zip(layers, caches):
                h = layer(h, cos, sin, mask, cache_position, kv_cache=kv_cache)
        return h if self.norm_out is None else self.norm_out(h)

    def rope_and_precision(
        self, position_ids: torch.Tensor, device_type: str
    ) -> tuple[torch.Tensor, torch.Tensor, AbstractContextManager]:
        """`(cos, sin, context)` for the decoder layers: RoPE tables for `position_ids` in the dtype the
        layers compute in, and the context they run under (`precision`)."""
        c = self.config
        cos, sin = self.freqs_mgr(position_ids, c.compute_dtype if self._mixed_precision() else c.param_init_type)
        return cos, sin, self.precision(device_type)

    def precision(self, device_type: str) -> AbstractContextManager:
        """The context the decoder layers and the head + loss run under: weights stored in another dtype
        than `compute_dtype` (MindFormers' mixed precision) autocast to `compute_dtype`."""
        if self._mixed_precision():
            return torch.autocast(device_type, dtype=self.config.compute_dtype)
        return nullcontext()

    def _mixed_precision(self) -> bool:
        c = self.config
        return c.param_init_type != c.compute_dtype or c.embedding_init_type != c.compute_dtype


@MindFormerRegister.register(MindFormerModuleType.MODELS)
class LlamaForCausalLM(PretrainedModel):
    """Llama with a language-model head.

    `forward` behaves as MindFormers' `construct`:

    * training (`model.train()`): `input_ids` holds `seq_length + 1` tokens; the model predicts
      `input_ids[:, 1:]` (or `labels[:, 1:]`) from `input_ids[:, :-1]`, ignoring positions whose input
      is `pad_token_id` or whose label is `ignore_token_id` (or `loss_mask == 0`); returns the scalar
      per-token mean cross-entropy.
    * inference (`model.eval()`): returns float32 logits `(B, T, vocab)`, or `(B, vocab)` for the last
      valid token of each row when `batch_valid_length` is given.

    Eval loss / perplexity: call `model.compute_loss(input_ids, labels, loss_mask=None,
    reduction="mean" | "sum" | "none")` under `torch.no_grad()` in any mode; it applies the same shift
    and masks as training. `reduction="none"` returns `(per_token_loss, mask)`, both `(B, seq_length)`.
    """

    config_class = LlamaConfig
    base_model_prefix = "model"
    hf_key_map = LLAMA_HF_KEY_MAP
    fused_weights = LLAMA_FUSED  # MindFormers' qkv_concat checkpoints: split into wq/wk/wv and w1/w3 on load
    _tied_weights_keys = ["lm_head.weight"]
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq$"]

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=config.param_init_type)
        self.tie_weights()
        self.post_init()

    def init_buffers(self, device: torch.device | str) -> None:
        """Rebuild the RoPE tables (non-persistent buffers) on `device`, e.g. after meta-device construction."""
        self.model.freqs_mgr = FreqsMgr(self.config).to(device)

    def tie_weights(self) -> None:
        # (a quantized head, swapped in for inference, holds its own integers: nothing to tie)
        if self.config.tie_word_embeddings and type(self.lm_head) is nn.Linear:
            self.lm_head.weight = self.model.tok_embeddings.embedding_weight

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_method_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, LlamaEmbedding):
            nn.init.normal_(module.embedding_weight, std=std)
        elif isinstance(module, LlamaRMSNorm):
            nn.init.ones_(module.weight)

    # ------------------------------------------------------------------ MindFormers interface
    def forward(
        self,
        input_ids: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        input_position: Any = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_embeds: torch.Tensor | None = None,
        *construct_tail: Any,
        batch_valid_length: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        **construct_kwargs: Any,
    ) -> torch.Tensor:
        """MindFormers' leading arguments in MindFormers' order; `input_position` is ignored.

        `attention_mask` may be a `(B, T)` 1/0 padding mask or a boolean `(B, 1, T, T)` mask (True =
        attend). The rest of MindFormers' `construct` arguments (`_CONSTRUCT_TAIL`, in its order) may
        follow positionally or by keyword: the Ascend paged-attention and deprecated ones are ignored,
        those with no PyTorch implementation (`_UNSUPPORTED`) raise NotImplementedError unless None;
        any other keyword raises TypeError.
        """
        tail = _construct_inputs(construct_tail, construct_kwargs)
        batch_valid_length = _one_of(tail, "batch_valid_length", batch_valid_length)
        loss_mask = _one_of(tail, "loss_mask", loss_mask)
        if self.training:
            return self.compute_loss(input_ids, labels, loss_mask=loss_mask, input_embeds=input_embeds)
        T = (input_ids if input_ids is not None else input_embeds).shape[1]
        mask = _attention_mask(attention_mask, T)
        hidden = self.model(input_ids, input_embeds, position_ids, mask)  # (B, T, hidden)
        if batch_valid_length is not None:  # only the last valid token of each row, (B, hidden)
            last = batch_valid_length.long().view(-1) - 1
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        with self.model.precision(hidden.device.type):  # the head computes in compute_dtype, as the layers do
            return self.lm_head(hidden).float()  # (B, T, vocab) or (B, vocab)

    def compute_loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        input_embeds: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Shifted next-token cross-entropy on `seq_length + 1` tokens (see the class docstring)."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"compute_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        tokens, targets = self.loss_inputs(input_ids, labels, loss_mask)
        embeds = input_embeds[:, :-1] if input_embeds is not None else None
        return self.loss_from_hidden(self.model(tokens, embeds), targets, reduction)

    def loss_inputs(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The one place that decides which tokens are learned: `seq_length + 1` ids -> `(tokens, targets)`,
        both `(B, seq_length)`, with `ignore_token_id` in `targets` wherever no loss is taken (the input is
        `pad_token_id` or the label is `ignore_token_id`; with `loss_mask`, wherever it is 0)."""
        tokens = input_ids[:, :-1]  # (B, S)
        targets = (labels if labels is not None else input_ids)[:, 1:].long()  # (B, S)
        ignore = self.config.ignore_token_id
        if loss_mask is not None:
            mask = (loss_mask[:, 1:] if loss_mask.shape[1] == input_ids.shape[1] else loss_mask).bool()
        else:
            mask = (tokens != self.config.pad_token_id) & (targets != ignore)
        return tokens, targets.masked_fill(~mask, ignore)

    def loss_from_hidden(
        self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of `lm_head(hidden)` `(B, S, hidden)` against `targets` `(B, S)` (from `loss_inputs`);
        positions whose target is `ignore_token_id` count for nothing. "mean" divides by the number of
        counted tokens (+ 1e-8), "sum" does not, "none" returns `(per_token_loss, mask)`.

        Runs under the model's `precision`, as the decoder layers do, so a training forward needs no
        autocast from its caller."""
        mask = (targets != self.config.ignore_token_id).float()  # (B, S)
        safe_targets = targets.masked_fill(targets == self.config.ignore_token_id, 0)
        head = self.lm_head
        # a plain head (not sharded by tensor parallelism, not adapted) takes the chunked path
        plain_head = type(head) is nn.Linear and head.bias is None and type(head.weight) is nn.Parameter
        with self.model.precision(hidden.device.type):
            if reduction != "none" and plain_head:
                # sum(weight * CE) in chunks, no (B*S, vocab) logits; mean = sum(mask * CE) / (sum(mask) + 1e-8)
                weights = mask if reduction == "sum" else mask / (mask.sum() + 1e-8)
                x = hidden.flatten(0, 1)  # (B*S, hidden)
                return linear_cross_entropy(x, head.weight, safe_targets.flatten(), weights.flatten())
            logits = head(hidden).float()  # (B, S, vocab)
            per_token = F.cross_entropy(logits.flatten(0, 1), safe_targets.flatten(), reduction="none")
        per_token = per_token.view_as(mask) * mask  # (B, S)
        if reduction == "none":
            return per_token, mask
        if reduction == "sum":
            return per_token.sum()
        return per_token.sum() / (mask.sum() + 1e-8)

    # ------------------------------------------------------------------ generation hooks
    def setup_kv_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> None:
        """Allocate a static KV cache of `max_length` slots per layer (replacing any previous one), kept in
        the model's generation state for `forward_with_cache`."""
        device = self.model.norm_out.weight.device  # (a float tensor in any model, quantized ones too)
        dtype = dtype or self.config.compute_dtype
        state = generation_state(self)
        state.kv_caches = [
            StaticKVCache(batch_size, layer.attention.n_kv_heads, max_length, layer.attention.head_dim, dtype, device)
            for layer in self.model.layers
        ]
        state.kv_cache_shape = (batch_size, max_length)

    def clear_kv_cache(self) -> None:
        state = generation_state(self)
        state.kv_caches = state.kv_cache_shape = None

    def kvcache(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        caches = generation_state(self).kv_caches
        if caches is None:
            raise RuntimeError("kvcache: no KV cache is set up (call setup_kv_cache or generate first)")
        return caches[layer_idx].key_cache, caches[layer_idx].value_cache

    def forward_with_cache(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache_position: torch.Tensor,
        attention_mask: torch.Tensor,
        kv_caches: list[StaticKVCache] | None = None,
    ) -> torch.Tensor:
        """One prefill or decode step through the KV cache; float32 logits of the last position, (B, vocab).

        `input_ids` (B, T) are written to cache slots `cache_position` (T,) with RoPE positions
        `position_ids` (B, T); `attention_mask` (B, 1, T, max_length) is boolean, True = attend.
        `kv_caches` defaults to those of `setup_kv_cache`.
        """
        if kv_caches is None:
            kv_caches = generation_state(self).kv_caches
            if kv_caches is None:
                raise RuntimeError("forward_with_cache: no KV cache is set up (call setup_kv_cache first)")
        hidden = self.model(input_ids, None, position_ids, attention_mask, cache_position, kv_caches)  # (B, T, hidden)
        with self.model.precision(hidden.device.type):  # the head too, as in forward (weights in another dtype)
            return self.lm_head(hidden[:, -1]).float()

    def paged_kv_caches(self, num_blocks: int, block_size: int, dtype: torch.dtype | None = None) -> list[PagedKVCache]:
        """One paged KV cache per layer for the serving engine (`generation/engine.py`)."""
        device = self.model.tok_embeddings.embedding_weight.device
        dtype = dtype or self.config.compute_dtype
        return [
            PagedKVCache(num_blocks, block_size, layer.attention.n_kv_heads, layer.attention.head_dim, dtype, device)
            for layer in self.model.layers
        ]

    def forward_paged(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        kv_caches: list[PagedKVCache],
        logits_index: torch.Tensor,
    ) -> torch.Tensor:
        """One engine step: the tokens of all scheduled requests as one sequence `(1, N)` with their RoPE
        positions `(1, N)`, through paged caches whose `metadata` says which request each token belongs to;
        float32 logits of the positions `logits_index` `(K,)`, `(K, vocab)`."""
        hidden = self.model(input_ids, None, position_ids, None, None, kv_caches)  # (1, N, hidden)
        with self.model.precision(hidden.device.type):
            return self.lm_head(hidden[0].index_select(0, logits_index)).float()

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict:
        """Inputs of one generation step: the token ids plus the step's positions and mask as given."""
        inputs = {"input_ids": input_ids}
        for key in ("position_ids", "attention_mask", "cache_position"):
            if kwargs.get(key) is not None:
                inputs[key] = kwargs[key]
        return inputs

    def prepare_inputs_for_predict_layout(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple:
        """Inputs with the predict shapes, on the meta device: `(input_ids,)` of `(batch_size, seq_length)`.

        The parallel code builds the model on the meta device, applies tensor/pipeline parallelism and
        FSDP to it, and traces `model(*inputs)` with these inputs (no memory, no weights) to check
        the sharded layout and derive each rank's shapes; only then are the sharded weights
        materialised and loaded from the checkpoint.
        """
        if input_ids is not None:
            shape = tuple(input_ids.shape)
        else:
            shape = (self.config.batch_size, self.config.seq_length)
        return (torch.empty(shape, dtype=torch.long, device="meta"),)

    def to_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.tok_embeddings(tokens)


def _attention_mask(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """A `(B, T)` padding mask becomes a boolean `(B, 1, T, T)` causal mask; None means plain causal."""
    if attention_mask is None or attention_mask.dim() == 4:
        return attention_mask if attention_mask is None else attention_mask.bool()
    keep = attention_mask.bool()  # (B, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
    mask = causal[None, None] & keep[:, None, None, :]  # (B, 1, T, T)
    # padded rows see nothing; let them see themselves so attention stays finite
    return mask | torch.eye(T, dtype=torch.bool, device=keep.device)[None, None]


# MindFormers' `LlamaForCausalLM.construct` arguments after `input_embeds`, in its order
_CONSTRUCT_TAIL = (
    "init_reset", "batch_valid_length", "batch_index", "zactivate_len", "block_tables", "slot_mapping",
    "prefix_keys_values", "llm_boost_inputs", "q_seq_lens", "loss_mask", "gather_index", "seq_range",
    "actual_seq_len",
)  # fmt: skip
# inputs with no PyTorch implementation: accepted only as None (the others are Ascend paged attention or
# deprecated: accepted and ignored)
_UNSUPPORTED = ("prefix_keys_values", "gather_index", "seq_range", "actual_seq_len")


def _construct_inputs(positional: tuple, keywords: dict[str, Any]) -> dict[str, Any]:
    """MindFormers' trailing `construct` inputs, given positionally (in `_CONSTRUCT_TAIL` order) or by
    keyword, as one checked mapping (see `LlamaForCausalLM.forward`)."""
    if len(positional) > len(_CONSTRUCT_TAIL):
        raise TypeError(
            f"LlamaForCausalLM.forward() takes at most {6 + len(_CONSTRUCT_TAIL)} positional arguments "
            f"(MindFormers' construct), got {6 + len(positional)}"
        )
    inputs = dict(zip(_CONSTRUCT_TAIL, positional))
    for name, value in keywords.items():
        if name not in _CONSTRUCT_TAIL:
            raise TypeError(
                f"LlamaForCausalLM.forward() got an unexpected keyword argument {name!r}; "
                f"MindFormers' other inputs are {', '.join(_CONSTRUCT_TAIL)}"
            )
        if name in inputs:
            raise TypeError(f"LlamaForCausalLM.forward() got multiple values for argument {name!r}")
        inputs[name] = value
    for name in _UNSUPPORTED:
        if inputs.get(name) is not None:
            raise NotImplementedError(f"LlamaForCausalLM.forward: {name} is not supported on PyTorch")
    return inputs


def _one_of(inputs: dict[str, Any], name: str, keyword: Any) -> Any:
    """`name` given either positionally (in `inputs`) or by its keyword parameter, not both."""
    if name in inputs and inputs[name] is not None:
        if keyword is not None:
            raise TypeError(f"LlamaForCausalLM.forward() got multiple values for argument {name!r}")
        return inputs[name]
    return keyword


# MindFormers' name for its inference (parallel) Llama, e.g. `arch: ParallelLlamaForCausalLM` in
# predict_llama2_13b_ptq.yaml: the same model here (parallelism is applied from outside the model)
ParallelLlamaForCausalLM = MindFormerRegister.register_cls(
    LlamaForCausalLM, MindFormerModuleType.MODELS, alias="ParallelLlamaForCausalLM"
)
