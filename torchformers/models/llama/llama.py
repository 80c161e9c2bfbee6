"""Llama for causal language modelling, single-device PyTorch.

Structure and parameter names follow MindFormers `mindformers/models/llama/llama.py` (spec §5.4:
`model.tok_embeddings.embedding_weight`, `model.layers.N.attention.wq.weight`, `feed_forward.w1/w2/w3`,
`attention_norm`, `ffn_norm`, `model.norm_out.weight`, `lm_head.weight`); the computation follows
Meta's `llama/model.py` and Hugging Face's `LlamaForCausalLM` (rotate-half RoPE, RMSNorm in fp32,
SwiGLU, grouped-query attention through `scaled_dot_product_attention`), so Hugging Face weights load
with a rename only (`LLAMA_HF_KEY_MAP`). Parallelism and compilation are applied from outside.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from torchformers.generation.kv_cache import StaticKVCache
from torchformers.models.attention import causal_attention
from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.models.modeling_utils import PretrainedModel
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["LlamaForCausalLM", "LlamaModel", "linear_cross_entropy", "rope_frequencies"]


def rope_frequencies(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies `(head_dim/2,)` and the cos/sin scale for `config.extend_method`.

    The same formulas as Hugging Face's `modeling_rope_utils` (llama3, yarn, linear, dynamic) and
    MindFormers' `FreqsMgr` (PI divides positions = LINEAR; NTK multiplies theta by the factor).
    """
    dim, base, method = config.head_size, config.theta, config.extend_method
    sf = config.scaling_factor
    factor = float(sf["factor"]) if isinstance(sf, dict) else float(sf)
    if method == "NTK":
        base = base * factor
    if method == "DYNAMIC_NTK":
        # computed once for the table length (HF recomputes per call; identical up to max_position_embedding)
        original = config.max_position_embedding
        length = max(config.seq_length, original)
        base = base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scale = 1.0
    if method in ("LINEAR", "PI"):
        inv_freq = inv_freq / factor
    elif method == "LLAMA3":
        old_len = sf["original_max_position_embeddings"]
        low, high = sf["low_freq_factor"], sf["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    elif method == "YARN":
        inv_freq, scale = _yarn(sf, dim, base, config.max_position_embedding)
    return inv_freq, scale


def _yarn(sf: dict, dim: int, base: float, max_pos: int) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071), as Hugging Face's `_compute_yarn_parameters`."""
    original = sf.get("original_max_position_embeddings") or max_pos
    factor = sf.get("factor") or max_pos / original

    def mscale_of(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = sf.get("attention_factor")
    if attention_factor is None:
        m, m_all = sf.get("mscale"), sf.get("mscale_all_dim")
        attention_factor = mscale_of(factor, m) / mscale_of(factor, m_all) if m and m_all else mscale_of(factor)
    beta_fast, beta_slow = sf.get("beta_fast") or 32, sf.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if sf.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


class _LinearCrossEntropy(torch.autograd.Function):
    """`sum_i w_i * CE(x_i @ W.T, t_i)` over row chunks, its gradients formed in the same pass.

    The (N, vocab) fp32 logits and their gradient are the largest tensors of a training step. Here a
    chunk's logits live only while its loss and `dlogits = w * (softmax - onehot)` are formed, and the
    gradients of `x` and `W` are taken from `dlogits` at once: the per-row weights `w` are an input, so
    backward only scales by the upstream scalar and nothing is recomputed. Matmuls run in the dtype of
    `x @ W.T` (autocast included), exactly as autograd would run them; softmax and `dW` are fp32.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, weights, chunk_rows):
        # x (N, hidden), weight (vocab, hidden), targets (N,), weights (N,) -> scalar fp32
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        dx = torch.empty_like(x) if want_grad else None
        dw = None  # fp32 sum over chunks
        for start in range(0, x.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            x_c, t_c, w_c = x[rows], targets[rows], weights[rows].float()
            logits = F.linear(x_c, weight).float()  # (n, vocab)
            target_logit = logits.gather(1, t_c.unsqueeze(1)).squeeze(1)
            row_max = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(row_max).exp_()  # in place of the logits: one (n, vocab) buffer per chunk
            total = exps.sum(dim=-1)
            loss += ((row_max.squeeze(1) + total.log() - target_logit) * w_c).sum()  # logsumexp - target logit
            if want_grad:
                dlogits = exps.mul_((w_c / total).unsqueeze(1))  # w * softmax
                dlogits[torch.arange(len(t_c), device=x.device), t_c] -= w_c  # w * (softmax - onehot)
                dlogits = dlogits.to(x.dtype)
                dx[rows] = dlogits @ weight  # (n, hidden)
                dw_c = dlogits.T @ x_c  # (vocab, hidden)
                dw = dw_c.float() if dw is None else dw.add_(dw_c)
        ctx.save_for_backward(dx, dw)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dw = ctx.saved_tensors
        dx = dx * grad_loss.to(dx.dtype) if ctx.needs_input_grad[0] else None
        dw = (dw * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return dx, dw, None, None, None


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, chunk_rows: int = 1024
) -> torch.Tensor:
    """`(F.cross_entropy(F.linear(x, weight).float(), targets, reduction="none") * weights).sum()` without
    keeping the (N, vocab) logits. x (N, hidden), weight (vocab, hidden), targets and weights (N,)."""
    return _LinearCrossEntropy.apply(x, weight, targets, weights, chunk_rows)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`.

    `sin` comes from `FreqsMgr` with its first half negated, so `rotate_half(x) * sin` is
    `roll(x, hd/2) * sin`: one op instead of chunk, neg and cat, and bit-identical.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class FreqsMgr(nn.Module):
    """RoPE cos/sin tables for every position up to `max(max_position_embedding, seq_length)`.

    `sin` holds `cat(-sin, sin)` (the sign of `rotate_half` folded in, see `apply_rope`).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        inv_freq, scale = rope_frequencies(config)
        length = max(config.max_position_embedding, config.seq_length)
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (L, hd/2)
        cos, sin = freqs.cos() * scale, freqs.sin() * scale
        self.register_buffer("cos", torch.cat((cos, cos), -1).to(config.rotary_dtype), persistent=False)
        self.register_buffer("sin", torch.cat((-sin, sin), -1).to(config.rotary_dtype), persistent=False)

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids (B, T) -> cos, sin (B, 1, T, hd) to broadcast over heads, in the attention's dtype
        cos, sin = self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)
        return (cos, sin) if dtype is None else (cos.to(dtype), sin.to(dtype))


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
        return F.embedding(input_ids, self.embedding_weight)


class LLamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_heads, config.kv_heads, config.head_size
        hidden, dtype, bias = config.hidden_size, config.param_init_type, config.qkv_has_bias
        self.wq = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias, dtype=dtype)
        self.wk = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias, dtype=dtype)
        self.wv = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias, dtype=dtype)
        self.wo = nn.Linear(self.n_heads * self.head_dim, hidden, bias=config.attn_proj_has_bias, dtype=dtype)
        self.wqkv: nn.Module | None = None  # wq, wk and wv as one, set by prepare_for_cpu_inference
        self.kv_cache: StaticKVCache | None = None

    fused_projections = {"wqkv": ("wq", "wk", "wv")}

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.wqkv is None:
            return self.wq(x), self.wk(x), self.wv(x)
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return self.wqkv(x).split((q_size, kv_size, kv_size), dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_position is not None:  # generation: keys/values of all cached slots, (B, n_kv, L, hd)
            k, v = self.kv_cache.update(cache_position, k, v)
        if mask is None:  # plain causal: a blocked kernel on CPU, flash attention on GPU (see models/attention.py)
            out = causal_attention(q, k, v)  # (B, n_heads, T, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class LlamaFeedForward(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden, ffn, dtype = config.hidden_size, config.ffn_hidden_size, config.param_init_type
        self.w1 = nn.Linear(hidden, ffn, bias=False, dtype=dtype)  # gate
        self.w2 = nn.Linear(ffn, hidden, bias=False, dtype=dtype)  # down
        self.w3 = nn.Linear(hidden, ffn, bias=False, dtype=dtype)  # up
        self.w13: nn.Module | None = None  # w1 and w3 as one, set by prepare_for_cpu_inference

    fused_projections = {"w13": ("w1", "w3")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is None:
            gate, up = self.w1(x), self.w3(x)
        else:
            gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class LLamaDecodeLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        norm_args = (config.hidden_size, config.rms_norm_eps, config.layernorm_compute_type, config.param_init_type)
        self.attention_norm = LlamaRMSNorm(*norm_args)
        self.attention = LLamaAttention(config)
        self.ffn_norm = LlamaRMSNorm(*norm_args)
        self.feed_forward = LlamaFeedForward(config)

    def forward(self, x, cos, sin, mask, cache_position=None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache_position)
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
    ) -> torch.Tensor:
        """Token ids `(B, T)` (or `input_embeds` `(B, T, hidden)`) -> hidden states `(B, T, hidden)`.

        A pipeline stage holds only some of the modules (torchtitan's way): without `tok_embeddings`
        the first argument already holds hidden states, without `norm_out` they come back unnormalised,
        and `layers` may be a `ModuleDict` keyed by the original layer numbers.
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
        with precision:
            for layer in layers:
                h = layer(h, cos, sin, mask, cache_position)
        return h if self.norm_out is None else self.norm_out(h)

    def rope_and_precision(self, position_ids: torch.Tensor, device_type: str):
        """`(cos, sin, context)` for the decoder layers: RoPE tables for `position_ids` in the dtype the
        layers compute in, and the context they run under. Weights stored in another dtype than
        `compute_dtype` (MindFormers' mixed precision) autocast to `compute_dtype`."""
        c = self.config
        mixed = c.param_init_type != c.compute_dtype or c.embedding_init_type != c.compute_dtype
        cos, sin = self.freqs_mgr(position_ids, c.compute_dtype if mixed else c.param_init_type)
        return cos, sin, torch.autocast(device_type, dtype=c.compute_dtype) if mixed else nullcontext()


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
        if self.config.tie_word_embeddings:
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
        input_position=None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_embeds: torch.Tensor | None = None,
        init_reset=None,
        batch_valid_length: torch.Tensor | None = None,
        batch_index=None,
        zactivate_len=None,
        block_tables=None,
        slot_mapping=None,
        prefix_keys_values=None,
        llm_boost_inputs=None,
        q_seq_lens=None,
        loss_mask: torch.Tensor | None = None,
        gather_index=None,
        seq_range=None,
        actual_seq_len=None,
    ) -> torch.Tensor:
        """MindFormers' argument list. input_position, init_reset, batch_index, zactivate_len,
        block_tables, slot_mapping, llm_boost_inputs and q_seq_lens (Ascend paged attention and
        deprecated inputs) are accepted and ignored. `attention_mask` may be a `(B, T)` 1/0 padding mask
        or a boolean `(B, 1, T, T)` mask (True = attend)."""
        for name, value in (("prefix_keys_values", prefix_keys_values), ("gather_index", gather_index),
                            ("seq_range", seq_range), ("actual_seq_len", actual_seq_len)):  # fmt: skip
            if value is not None:
                raise NotImplementedError(f"LlamaForCausalLM.forward: {name} is not supported on PyTorch")
        if self.training:
            return self.compute_loss(input_ids, labels, loss_mask=loss_mask, input_embeds=input_embeds)
        T = (input_ids if input_ids is not None else input_embeds).shape[1]
        mask = _attention_mask(attention_mask, T)
        hidden = self.model(input_ids, input_embeds, position_ids, mask)  # (B, T, hidden)
        if batch_valid_length is not None:  # only the last valid token of each row, (B, hidden)
            last = batch_valid_length.long().view(-1) - 1
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.lm_head(hidden).float()

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

    def loss_from_hidden(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
        """Cross-entropy of `lm_head(hidden)` `(B, S, hidden)` against `targets` `(B, S)` (from `loss_inputs`);
        positions whose target is `ignore_token_id` count for nothing. "mean" divides by the number of
        counted tokens (+ 1e-8), "sum" does not, "none" returns `(per_token_loss, mask)`."""
        mask = (targets != self.config.ignore_token_id).float()
        safe_targets = targets.masked_fill(targets == self.config.ignore_token_id, 0)
        head = self.lm_head
        if reduction != "none" and type(head) is nn.Linear and head.bias is None and type(head.weight) is nn.Parameter:
            # a plain head (not sharded by tensor parallelism, not adapted): sum(weight * CE) in chunks,
            # no (B*S, vocab) logits; mean = sum(mask * CE) / (sum(mask) + 1e-8) as below
            weights = mask if reduction == "sum" else mask / (mask.sum() + 1e-8)
            return linear_cross_entropy(hidden.flatten(0, 1), head.weight, safe_targets.flatten(), weights.flatten())
        logits = head(hidden).float()  # (B, S, vocab)
        per_token = F.cross_entropy(logits.flatten(0, 1), safe_targets.flatten(), reduction="none")
        per_token = per_token.view_as(mask) * mask
        if reduction == "none":
            return per_token, mask
        if reduction == "sum":
            return per_token.sum()
        return per_token.sum() / (mask.sum() + 1e-8)

    # ------------------------------------------------------------------ generation hooks
    def setup_kv_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> None:
        """Allocate a static KV cache of `max_length` slots in every layer (replacing any previous one)."""
        device = self.model.tok_embeddings.embedding_weight.device
        dtype = dtype or self.config.compute_dtype
        for layer in self.model.layers:
            attn = layer.attention
            attn.kv_cache = StaticKVCache(batch_size, attn.n_kv_heads, max_length, attn.head_dim, dtype, device)

    def clear_kv_cache(self) -> None:
        for layer in self.model.layers:
            layer.attention.kv_cache = None
        self.__dict__["_kv_cache_shape"] = None

    def kvcache(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.model.layers[layer_idx].attention.kv_cache
        if cache is None:
            raise RuntimeError("kvcache: no KV cache is set up (call setup_kv_cache or generate first)")
        return cache.key_cache, cache.value_cache

    def forward_with_cache(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache_position: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One prefill or decode step through the KV cache; float32 logits of the last position, (B, vocab).

        `input_ids` (B, T) are written to cache slots `cache_position` (T,) with RoPE positions
        `position_ids` (B, T); `attention_mask` (B, 1, T, max_length) is boolean, True = attend.
        """
        hidden = self.model(input_ids, None, position_ids, attention_mask, cache_position)  # (B, T, hidden)
        return self.lm_head(hidden[:, -1]).float()

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs) -> dict:
        """Inputs of one generation step: the token ids plus the step's positions and mask as given."""
        inputs = {"input_ids": input_ids}
        for key in ("position_ids", "attention_mask", "cache_position"):
            if kwargs.get(key) is not None:
                inputs[key] = kwargs[key]
        return inputs

    def prepare_inputs_for_predict_layout(self, input_ids=None, **kwargs) -> tuple:
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
