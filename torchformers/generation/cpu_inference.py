"""`prepare_for_cpu_inference(model)`: swap `nn.Linear` layers for oneDNN-prepacked ones on CPU.

On x86 CPUs, MKL's fp32 matrix-vector path (what `F.linear` uses for one decode token) reaches about
half the memory bandwidth; oneDNN with weights reordered once into its blocked layout reaches the
ceiling, which doubles batch-1 decode speed (see docs' performance notes; the same ops back
`torch.compile`'s CPU "freezing" path: `torch.ops.mkldnn._reorder_linear_weight` and
`torch.ops.mkldnn._linear_pointwise`). Results equal `F.linear` up to fp32 summation order.

The swap is applied from outside the model, for inference only: packed layers hold no `weight`
parameter (so `state_dict()` no longer lists them and they do not train). Save or convert a model
before preparing it. Anywhere else (GPU, non-fp32 weights, a PyTorch build without oneDNN) the
model is returned untouched.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["PackedLinear", "can_prepack", "prepare_for_cpu_inference"]

logger = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """`y = x W^T + b` with `W` prepacked for oneDNN (inference only)."""

    def __init__(self, linear: nn.Linear, batch_size_hint: int = 1) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_size_hint)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_prepack(model: nn.Module) -> bool:
    """True when every parameter is an fp32 CPU tensor and this PyTorch has oneDNN."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


@torch.no_grad()
def prepare_for_cpu_inference(model: nn.Module, batch_size_hint: int = 1) -> nn.Module:
    """Replace every `nn.Linear` of `model` by a `PackedLinear` when `can_prepack(model)`; returns `model`.

    Puts the model in eval mode. Tied weights (e.g. `lm_head` sharing the embedding) get their own
    packed copy; the embedding keeps its tensor.
    """
    if not can_prepack(model):
        logger.info("prepare_for_cpu_inference: not an fp32 CPU model with oneDNN available; left unchanged")
        return model
    model.eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, PackedLinear(child, batch_size_hint))
    return model
