"""GGUF quantized blocks read as integers with their scales, not dequantized: what quantized layers load.

ggml stores a quantized 2-D tensor row by row, each row a run of blocks along the input dimension
(ggml `ggml-common.h`, the `gguf` package's `gguf.quants`):

- `Q4_0`: 32 weights, fp16 `d`, 16 bytes of nibbles (byte j: weight j low, weight j + 16 high);
  `w = d·(q − 8)`.
- `Q4_1`: 32 weights, fp16 `d` and `m`, the same nibbles; `w = d·q + m`.
- `Q4_K`: 256 weights in 8 sub-blocks of 32, fp16 `d` and `dmin`, 12 bytes of 6-bit sub-block
  scales `sc` and mins `mn`, 128 bytes of nibbles (bytes 32c..32c+31: sub-block 2c low, 2c + 1 high);
  `w = d·sc·q − dmin·mn`.
- `Q8_0`: 32 weights, fp16 `d`, 32 int8; `w = d·q`.

The three 4-bit formats are the same thing as int4 in groups of 32 with a scale and a zero point,
`w = (q − 8)·s + z` (the layout of PyTorch's int4 kernels): `s = d` (`d·sc` for Q4_K) and
`z = 8·s + offset` with offset `−8·d` (Q4_0), `m` (Q4_1), `−dmin·mn` (Q4_K). `int4_groups` gives
`(q, s, z)`; `int8_groups` gives Q8_0's `(q, d)`. Computed in fp32, `(q − 8)·s + z` equals the `gguf`
package's dequantization to fp32 rounding (a few ulp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["INT4_TYPES", "INT8_TYPES", "GGUFBlocks", "int4_groups", "int8_groups"]

INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
INT8_TYPES = ("Q8_0",)
GROUP = 32  # weights per group of every format above (Q4_K: per sub-block)
_BYTES = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q8_0": (32, 34)}  # weights, bytes per block


@dataclass
class GGUFBlocks:
    """One quantized GGUF tensor kept as its blocks.

    Attributes:
        kind: the ggml type name ("Q4_1", ...).
        shape: (out_features, in_features), as the float tensor would be.
        data: (out_features, bytes per row) uint8, the rows' blocks.
    """

    kind: str
    shape: tuple[int, int]
    data: np.ndarray

    def blocks(self) -> np.ndarray:
        """(rows, blocks per row, bytes per block) uint8."""
        per_block, nbytes = _BYTES[self.kind]
        n, k = self.shape
        if k % per_block:
            raise ValueError(f"{self.kind} rows of {k} weights are not whole blocks of {per_block}")
        return np.ascontiguousarray(self.data).reshape(n, k // per_block, nbytes)

    def take_rows(self, order: torch.Tensor) -> GGUFBlocks:
        """The same tensor with its rows reordered (`order[i]` is the source row of row i)."""
        return GGUFBlocks(self.kind, self.shape, np.ascontiguousarray(self.data)[order.numpy()])


def _f16(raw: np.ndarray) -> torch.Tensor:
    """fp16 values from (..., 2) bytes, as fp32."""
    return torch.from_numpy(np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32))


def _nibbles(raw: np.ndarray, run: int) -> torch.Tensor:
    """(..., bytes) nibbles -> (..., 2 * bytes) uint8: each run of `run` bytes gives its `run` low
    nibbles, then its `run` high nibbles."""
    b = torch.from_numpy(np.ascontiguousarray(raw))
    b = b.reshape(*b.shape[:-1], -1, run)
    return torch.stack([b & 0xF, b >> 4], dim=-2).reshape(*b.shape[:-2], -1)


def _q4k_scales(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml `get_scale_min_k4`)."""
    s = torch.from_numpy(np.ascontiguousarray(raw)).to(torch.int32)
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def int4_groups(t: GGUFBlocks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(q (N, K) uint8 in 0..15, scale (N, K/32) fp32, zero (N, K/32) fp32)` with
    `w = (q − 8)·scale + zero` in groups of 32 input columns, for Q4_0, Q4_1 and Q4_K."""
    n, k = t.shape
    b = t.blocks()
    if t.kind == "Q4_0":
        d = _f16(b[..., 0:2])
        return _nibbles(b[..., 2:], 16).reshape(n, k), d, torch.zeros_like(d)
    if t.kind == "Q4_1":
        d = _f16(b[..., 0:2])
        m = _f16(b[..., 2:4])
        return _nibbles(b[..., 4:], 16).reshape(n, k), d, m + 8 * d
    if t.kind == "Q4_K":
        d = _f16(b[..., 0:2])  # (N, blocks)
        dmin = _f16(b[..., 2:4])
        sc, mn = _q4k_scales(b[..., 4:16])  # (N, blocks, 8)
        scale = (d[..., None] * sc).reshape(n, -1)
        zero = 8 * scale - (dmin[..., None] * mn).reshape(n, -1)
        return _nibbles(b[..., 16:], 32).reshape(n, k), scale, zero
    raise ValueError(f"{t.kind} is not a 4-bit format ({', '.join(INT4_TYPES)})")


def int8_groups(t: GGUFBlocks) -> tuple[torch.Tensor, torch.Tensor]:
    """`(q (N, K) int8, scale (N, K/32) fp32)` with `w = q·scale` in groups of 32, for Q8_0."""
    if t.kind != "Q8_0":
        raise ValueError(f"{t.kind} is not an 8-bit format ({', '.join(INT8_TYPES)})")
    n, k = t.shape
    b = t.blocks()
    d = _f16(b[..., 0:2])
    q = torch.from_numpy(np.ascontiguousarray(b[..., 2:]).view(np.int8)).reshape(n, k)
    return q, d
