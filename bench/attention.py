"""Causal attention on CPU: torchformers' blocked kernel against `scaled_dot_product_attention`.

Forward + backward of one attention layer (batch 4, 12 heads / 4 key-value heads, seq 512, head 64:
the shape of `bench/train.py`), in bf16 and fp32, the sides alternating, best of `--repeats`; prints
milliseconds, the ratio (SDPA / ours: how many times faster ours is), the largest difference from an
fp64 reference of outputs and gradients for both, and the bytes ours saves for the backward pass.

    PYTHONPATH=. python bench/attention.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from torchformers.models.attention import BLOCK_ROWS, causal_attention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    B, H, KV, T, D = args.batch, args.heads, args.kv_heads, args.seq, args.head_dim
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)  # noqa: E731
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; B {B}, heads {H}/{KV}, seq {T}, head {D}")
    for dtype in (torch.bfloat16, torch.float32):
        gen = torch.Generator().manual_seed(0)
        base = [torch.randn(B, n, T, D, generator=gen) for n in (H, KV, KV)]
        grad = torch.randn(B, H, T, D, generator=gen)

        def run(fn, cast, base=base, grad=grad):
            q, k, v = (t.to(cast, copy=True).requires_grad_() for t in base)
            out = fn(q, k, v)
            out.backward(grad.to(cast))
            return [out.detach(), q.grad, k.grad, v.grad]

        exact = run(sdpa, torch.float64)
        best = {"sdpa": float("inf"), "ours": float("inf")}
        err = {}
        for _ in range(args.repeats):
            for name, fn in (("sdpa", sdpa), ("ours", causal_attention)):
                start = time.perf_counter()
                got = run(fn, dtype)
                best[name] = min(best[name], time.perf_counter() - start)
                err[name] = max((a.double() - b).abs().max().item() for a, b in zip(got, exact))
        saved = B * H * T * (T + BLOCK_ROWS) // 2 * base[0].to(dtype).element_size()
        print(f"{str(dtype)[6:]:9s} sdpa {best['sdpa'] * 1e3:6.1f} ms (max err {err['sdpa']:.1e})  "
              f"ours {best['ours'] * 1e3:6.1f} ms (max err {err['ours']:.1e})  "
              f"ratio {best['sdpa'] / best['ours']:.2f}x  saved for backward {saved / 2**20:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
