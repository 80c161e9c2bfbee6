"""A preallocated (static) key/value cache, one per attention layer (gpt-fast's `KVCache`).

Buffers are allocated once per `generate` call at their final size, so every decode step has the
same shapes (which is what lets `torch.compile` / CUDA graphs replay it). The model does not hold
them: generation keeps them in its `GenerationState` and passes them to each step, so a saved model
never contains them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Int8KVCache", "StaticKVCache"]


class StaticKVCache(nn.Module):
    """Keys and values of one layer: `(batch, n_kv_heads, max_length, head_dim)` each."""

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.register_buffer("key_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("value_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, cache_position: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `key`/`value` `(B, n_kv, T, hd)` at slots `cache_position` `(T,)`; return the whole cache."""
        self.key_cache.index_copy_(2, cache_position, key.to(self.key_cache.dtype))
        self.value_cache.index_copy_(2, cache_position, value.to(self.value_cache.dtype))
        return self.key_cache, self.value_cache

    def reorder(self, rows: torch.Tensor) -> None:
        """Row `i` of the batch continues the cache of row `rows[i]` (beam search)."""
        for buf in self.buffers():
            buf.copy_(buf.index_select(0, rows))


class Int8KVCache(StaticKVCache):
    """Keys and values stored as int8 with one symmetric scale per token and head (MindFormers' "C8"
    `kvcache_dtype: int8`): half the bytes of a bf16 cache, a quarter of fp32. `update` returns the whole
    cache dequantized to `dtype` for attention."""

    def __init__(self, batch_size: int, num_kv_heads: int, max_length: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        super().__init__(batch_size, num_kv_heads, max_length, head_dim, torch.int8, device)
        self.dtype = dtype  # what `update` returns
        for name in ("key", "value"):
            scale = torch.zeros((batch_size, num_kv_heads, max_length, 1), dtype=torch.float32, device=device)
            self.register_buffer(f"{name}_scale", scale, persistent=False)

    @staticmethod
    def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float()
        scale = (x.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-8)  # (B, n_kv, T, 1)
        return torch.round(x / scale).clamp(-128, 127).to(torch.int8), scale

    def update(
        self, cache_position: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for name, x in (("key", key), ("value", value)):
            q, scale = self._quantize(x)
            cache, scales = getattr(self, f"{name}_cache"), getattr(self, f"{name}_scale")
            cache.index_copy_(2, cache_position, q)
            scales.index_copy_(2, cache_position, scale)
            out.append((cache.float() * scales).to(self.dtype))
        return out[0], out[1]
