"""The CPU blocked causal attention equals `scaled_dot_product_attention` (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchformers.models.attention import _BlockedCausalAttention, causal_attention


def _inputs(B, H, KV, T, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, T, D, generator=g).to(dtype).requires_grad_() for n in (H, KV, KV)]


def _run(fn, q, k, v, grad):
    out = fn(q, k, v)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("H,KV,T", [(4, 4, 37), (6, 2, 300), (12, 4, 512)])
def test_blocked_attention_matches_sdpa_in_fp32(H, KV, T):
    q, k, v = _inputs(2, H, KV, T, 32, torch.float32)
    grad = torch.randn(2, H, T, 32, generator=torch.Generator().manual_seed(1))
    ours = _run(_BlockedCausalAttention.apply, q, k, v, grad)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)  # noqa: E731
    ref = _run(sdpa, q2, k2, v2, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5, msg=name)


def test_blocked_attention_in_bf16_is_as_close_to_fp64_as_sdpa():
    q, k, v = _inputs(2, 6, 2, 256, 64, torch.bfloat16)
    grad = torch.randn(2, 6, 256, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    exact = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                 *(t.detach().double().requires_grad_() for t in (q, k, v)), grad.double())  # fmt: skip
    ours = _run(_BlockedCausalAttention.apply, q, k, v, grad)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = _run(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), q2, k2, v2, grad
    )
    for a, b, x in zip(ours, ref, exact):
        assert a.dtype == torch.bfloat16
        err, ref_err = (a.double() - x).abs().max().item(), (b.double() - x).abs().max().item()
        assert err <= 2 * ref_err + 1e-3


def test_causal_attention_falls_back_to_sdpa_above_the_memory_limit():
    q, k, v = _inputs(1, 2, 2, 64, 16, torch.float32)
    small = causal_attention(q, k, v)
    assert small.grad_fn.name() == "_BlockedCausalAttentionBackward"
    large = causal_attention(q, k, v, max_saved_bytes=1024)
    assert large.grad_fn.name().startswith("ScaledDotProduct")
    torch.testing.assert_close(small, large, rtol=0, atol=1e-5)
