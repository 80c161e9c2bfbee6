"""Rotary position embedding: inverse frequencies per scaling method, the cos/sin tables, and `apply_rope`.

The frequencies follow Hugging Face's `modeling_rope_utils` (default, linear, dynamic, llama3, yarn)
and MindFormers' `FreqsMgr` (`extend_method` names: PI divides positions = LINEAR; NTK multiplies theta
by the factor). The rotation is Hugging Face's rotate-half form, with the sign of `rotate_half` folded
into the `sin` table.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["FreqsMgr", "RopeConfig", "apply_rope", "rope_frequencies"]


class RopeConfig(Protocol):
    """The configuration fields RoPE reads (`LlamaConfig` has them)."""

    head_size: int
    theta: float
    extend_method: str
    scaling_factor: Any  # a number, or a dict of the method's parameters with "factor"
    seq_length: int
    max_position_embedding: int
    rotary_dtype: torch.dtype


def rope_frequencies(config: RopeConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies `(head_dim/2,)` and the cos/sin scale for `config.extend_method`."""
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


class FreqsMgr(nn.Module):
    """RoPE cos/sin tables for every position up to `max(max_position_embedding, seq_length)`.

    `sin` holds `cat(-sin, sin)` (the sign of `rotate_half` folded in, see `apply_rope`).
    """

    def __init__(self, config: RopeConfig) -> None:
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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`.

    `sin` comes from `FreqsMgr` with its first half negated, so `rotate_half(x) * sin` is
    `roll(x, hd/2) * sin`: one op instead of chunk, neg and cat, and bit-identical.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
