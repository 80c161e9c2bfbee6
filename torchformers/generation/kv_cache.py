"""A preallocated (static) key/value cache, one per attention layer (gpt-fast's `KVCache`).

Buffers are allocated once per `generate` call at their final size, so every decode step has the
same shapes (which is what lets `torch.compile` / CUDA graphs replay it). The model does not hold
them: generation keeps them in its `GenerationState` and passes them to each step, so a saved model
never contains them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StaticKVCache"]


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
