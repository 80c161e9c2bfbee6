"""The chunked linear + cross-entropy of `LlamaForCausalLM.compute_loss` against the plain formula.

Reference: `F.cross_entropy(F.linear(x, W).float(), t, reduction="none")` weighted and summed, run by
autograd; value and gradients of `x` and `W` must match, across several chunks, in fp32, bf16 weights
and under bf16 autocast (the three ways the trainer runs it). The model runs head + loss under its own
precision, so the trainer's autocast adds nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchformers.models import LlamaConfig, LlamaForCausalLM
from torchformers.models.llama.llama import linear_cross_entropy


def plain(x, w, t, weights):
    return (F.cross_entropy(F.linear(x, w).float(), t, reduction="none") * weights).sum()


@pytest.mark.parametrize(
    "dtype, autocast, tol",
    [(torch.float32, False, 1e-6), (torch.bfloat16, False, 1e-2), (torch.float32, True, 1e-2)],
    ids=["fp32", "bf16_weights", "bf16_autocast"],
)
def test_chunked_linear_cross_entropy_matches_plain_value_and_gradients(dtype, autocast, tol):
    g = torch.Generator().manual_seed(0)
    n, hidden, vocab = 45, 24, 70
    x0 = torch.randn(n, hidden, generator=g).to(dtype)
    w0 = (torch.randn(vocab, hidden, generator=g) * 0.3).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    mask = (torch.rand(n, generator=g) > 0.25).float()
    weights = mask / mask.sum()
    results = []
    for fn in (lambda *a: linear_cross_entropy(*a, chunk_rows=16), plain):  # 16 rows: three chunks, one short
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(x, w, targets, weights)
        (3.0 * loss).backward()  # an upstream gradient other than 1
        results.append((loss, x.grad, w.grad))
    (loss, dx, dw), (ref_loss, ref_dx, ref_dw) = results
    assert loss.dtype == torch.float32 and dx.dtype == dw.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, ref_dx, rtol=tol, atol=tol * ref_dx.abs().max().item())
    torch.testing.assert_close(dw, ref_dw, rtol=tol, atol=tol * ref_dw.abs().max().item())


def test_masked_rows_give_no_loss_and_no_gradient():
    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    loss = linear_cross_entropy(x, w, torch.tensor([1, 2, 3, 4, 5, 6]), weights, chunk_rows=4)
    loss.backward()
    assert x.grad[weights == 0].abs().max().item() == 0.0
    kept = plain(x[weights == 1], w, torch.tensor([1, 3, 6]), torch.ones(3))
    torch.testing.assert_close(loss, kept)


def test_no_gradient_work_without_grad():
    x, w = torch.randn(5, 4), torch.randn(7, 4)
    with torch.no_grad():
        loss = linear_cross_entropy(x.requires_grad_(), w, torch.arange(5), torch.ones(5))
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, plain(x, w, torch.arange(5), torch.ones(5)))


def _mixed_llama(compute_dtype: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=64,
                      seq_length=16, compute_dtype=compute_dtype, param_init_type="float32")  # fmt: skip
    return LlamaForCausalLM(cfg).train()


def _loss_and_grads(model: LlamaForCausalLM, ids: torch.Tensor, outer_autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer_autocast):
        loss = model(ids)  # train mode: the scalar loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_model_precision_covers_the_whole_training_forward():
    """fp32 weights computing in bf16: the model autocasts its layers and its head + loss itself, so the
    trainer's autocast around the forward changes nothing, bit for bit."""
    model = _mixed_llama("bfloat16")
    ids = torch.randint(3, 64, (2, 17))
    loss, grads = _loss_and_grads(model, ids, outer_autocast=False)
    loss_outer, grads_outer = _loss_and_grads(model, ids, outer_autocast=True)
    assert torch.equal(loss, loss_outer)
    assert all(torch.equal(g, h) for g, h in zip(grads, grads_outer))

    tokens, targets = model.loss_inputs(ids)
    with torch.no_grad():
        hidden = model.model(tokens)  # (B, S, hidden)
        per_token, _ = model.loss_from_hidden(hidden, targets, reduction="none")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            per_token_outer, _ = model.loss_from_hidden(hidden, targets, reduction="none")
        # the same weights computing in fp32 give other values: the head did run in bf16
        fp32 = _mixed_llama("float32")
        fp32.load_state_dict(model.state_dict())
        per_token_fp32, _ = fp32.loss_from_hidden(hidden, targets, reduction="none")
    assert torch.equal(per_token, per_token_outer) and not torch.equal(per_token, per_token_fp32)
