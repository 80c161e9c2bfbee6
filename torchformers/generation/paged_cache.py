"""Paged key/value cache: fixed-size blocks shared by every request of the serving engine.

vLLM's design, in PyTorch: each attention layer owns two pools of `num_blocks` blocks of `block_size`
token slots, `(num_blocks, block_size, n_kv_heads, head_dim)`. A request holds a block table (the
blocks of its tokens, in order); its token `t` lives in slot `table[t // block_size] * block_size +
t % block_size`. One engine step runs every scheduled token of every request as one flat sequence
`(1, N)` through the model (decode tokens and prefill chunks together); the layers' projections see
`N` rows and only attention needs to know which request a token belongs to. The `StepMetadata` of the
step (shared by all layers) says so, and `PagedKVCache.attention` writes the step's keys and values
into their slots, then attends each request to its own context:

* decoding requests (one new token each) together: their blocks are gathered into one padded batch
  `(B, n_kv, L, hd)` and attended in one `scaled_dot_product_attention` call with a padding mask;
* a prefill chunk per request: with no earlier context, plain causal attention over the chunk; after
  a cached prefix or an earlier chunk, the chunk's queries attend to all earlier slots plus the
  causal part of the chunk.

`BlockAllocator` hands blocks out and takes them back, with reference counts and prefix caching: a
full block is named by a hash of its tokens and of the tokens before it, so a later prompt that starts
the same way (the same system prompt, the growing history of a chat) reuses those blocks instead of
recomputing them. Freed blocks that carry a hash stay cached until their slots are needed again
(least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["BlockAllocator", "PagedKVCache", "StepMetadata", "block_hashes"]


def block_hashes(tokens: Sequence[int], block_size: int, salt: object = None) -> list[int]:
    """The prefix-cache key of each full block of `tokens`: a hash of the block's tokens chained with
    the key of the block before it (so equal keys mean equal prefixes). `salt` separates caches that
    must not be shared (e.g. per adapter)."""
    keys, parent = [], hash(("tf-prefix", salt))
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        keys.append(parent)
    return keys


class BlockAllocator:
    """Blocks `0 .. num_blocks - 1`: reference counts, a free list, and the prefix cache (hash -> block)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"BlockAllocator: num_blocks and block_size must be positive, got {num_blocks}, {block_size}"
            )
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # never cached; pop() takes block 0 first
        self.evictable: OrderedDict[int, None] = OrderedDict()  # freed blocks still holding a cached prefix
        self.cached: dict[int, int] = {}  # prefix hash -> block
        self.block_hash: dict[int, int] = {}  # block -> its prefix hash

    @property
    def num_free(self) -> int:
        """Blocks a request can be given now (free, or cached but unused)."""
        return len(self.free) + len(self.evictable)

    def allocate(self) -> int:
        if self.free:
            block = self.free.pop()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)  # the least recently freed cached block
            del self.cached[self.block_hash.pop(block)]
        else:
            raise RuntimeError("BlockAllocator: no free KV cache block")
        self.ref_counts[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become free (or evictable if cached).
        Released last block first, so the tail of a sequence is evicted before its shared head."""
        for block in reversed(blocks):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if block in self.block_hash:
                    self.evictable[block] = None
                else:
                    self.free.append(block)

    def lookup(self, keys: Sequence[int]) -> list[int]:
        """The cached blocks of the longest cached prefix of `keys`, each given one more reference."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for key in keys:
            block = self.cached.get(key)
            if block is None:
                break
            if self.ref_counts[block] == 0:
                del self.evictable[block]
            self.ref_counts[block] += 1
            hits.append(block)
        return hits

    def register(self, block: int, key: int) -> None:
        """`block` now holds the full block named `key`: later prompts may reuse it."""
        if not self.enable_prefix_caching or key in self.cached or block in self.block_hash:
            return
        self.cached[key] = block
        self.block_hash[block] = key


@dataclass
class StepMetadata:
    """Where the tokens of one engine step go and what they attend to (shared by all layers).

    The step's `N` tokens are laid out request by request. `slots` `(N,)`: the cache slot of each
    token. Decoding requests (one token each) come first: `decode_tables` `(D, max_blocks)` and
    `decode_mask` `(D, 1, 1, max_blocks * block_size)` (True = attend). Then one entry per prefill
    chunk in `prefills`: `(start, length, context, table)`: its tokens `start:start+length` of the step,
    `context` tokens of the request already cached before the chunk, and the block table `(n_blocks,)`
    covering `context + length` tokens.
    """

    slots: torch.Tensor
    num_decodes: int = 0
    decode_tables: torch.Tensor | None = None
    decode_mask: torch.Tensor | None = None
    prefills: list[tuple[int, int, int, torch.Tensor]] = field(default_factory=list)


class PagedKVCache:
    """One attention layer's key and value pools `(num_blocks, block_size, n_kv_heads, head_dim)`.

    The attention layer hands its rotated queries, keys and values of the step to `attention` (the
    layer recognises this cache by `paged = True`) and gets the attention output back."""

    paged = True

    def __init__(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        # zeros, not empty: slots no request has written yet are read (masked) by padded decode rows, and
        # uninitialised memory could hold NaN, which a mask does not remove
        self.key_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.value_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.metadata: StepMetadata | None = None  # set by the engine before each step

    def _gather(self, cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """The blocks of `tables` `(B, n_blocks)` as `(B, n_kv, n_blocks * block_size, hd)`."""
        B, n = tables.shape
        blocks = cache.index_select(0, tables.reshape(-1))  # (B * n, bs, n_kv, hd)
        return blocks.view(B, n * self.block_size, *cache.shape[2:]).transpose(1, 2)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`q` `(1, H, N, hd)`, `k`/`v` `(1, n_kv, N, hd)` of the step's tokens -> `(1, H, N, hd)`."""
        meta = self.metadata
        flat_k, flat_v = (
            self.key_cache.view(-1, *self.key_cache.shape[2:]),
            self.value_cache.view(-1, *self.value_cache.shape[2:]),
        )
        flat_k.index_copy_(0, meta.slots, k[0].transpose(0, 1).to(flat_k.dtype))  # (N, n_kv, hd)
        flat_v.index_copy_(0, meta.slots, v[0].transpose(0, 1).to(flat_v.dtype))
        gqa = k.shape[1] != q.shape[1]
        out = torch.empty_like(q)
        D = meta.num_decodes
        if D:
            keys, values = (
                self._gather(self.key_cache, meta.decode_tables),
                self._gather(self.value_cache, meta.decode_tables),
            )
            dq = q[0, :, :D].transpose(0, 1).unsqueeze(2)  # (D, H, 1, hd)
            o = F.scaled_dot_product_attention(dq, keys.to(q.dtype), values.to(q.dtype), attn_mask=meta.decode_mask,
                                               enable_gqa=gqa)  # fmt: skip
            out[0, :, :D] = o.squeeze(2).transpose(0, 1)
        for start, length, context, table in meta.prefills:
            cq = q[:, :, start : start + length]
            if context == 0:  # a prompt's first chunk: causal attention over the chunk itself
                ck, cv = k[:, :, start : start + length], v[:, :, start : start + length]
                o = F.scaled_dot_product_attention(cq, ck, cv, is_causal=True, enable_gqa=gqa)
            else:  # after cached tokens: every earlier slot, then the causal part of the chunk
                total = context + length
                ck = self._gather(self.key_cache, table[None])[:, :, :total].to(q.dtype)
                cv = self._gather(self.value_cache, table[None])[:, :, :total].to(q.dtype)
                query_pos = torch.arange(context, total, device=q.device)[:, None]
                mask = torch.arange(total, device=q.device)[None, :] <= query_pos  # (length, total)
                o = F.scaled_dot_product_attention(cq, ck, cv, attn_mask=mask, enable_gqa=gqa)
            out[:, :, start : start + length] = o
        return out
