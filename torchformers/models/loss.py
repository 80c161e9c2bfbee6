"""Language-model head and cross-entropy in one chunked pass: `linear_cross_entropy`.

The (N, vocab) fp32 logits and their gradient are the largest tensors of a training step; computing
the loss and its gradients chunk by chunk, in the forward pass (as Liger-Kernel's
`LigerFusedLinearCrossEntropyFunction` does), keeps one chunk of them alive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear_cross_entropy"]


class _LinearCrossEntropy(torch.autograd.Function):
    """`sum_i w_i * CE(x_i @ W.T, t_i)` over row chunks, its gradients formed in the same pass.

    A chunk's logits live only while its loss and `dlogits = w * (softmax - onehot)` are formed, and the
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
