"""`prepare_for_cpu_inference(model)`: swap `nn.Linear` layers for oneDNN-prepacked ones on CPU.

On x86 CPUs, MKL's fp32 matrix-vector path (what `F.linear` uses for one decode token) reaches about
half the memory bandwidth; oneDNN with weights reordered once into its blocked layout reaches the
ceiling, which doubles batch-1 decode speed (see docs' performance notes; the same ops back
`torch.compile`'s CPU "freezing" path: `torch.ops.mkldnn._reorder_linear_weight` and
`torch.ops.mkldnn._linear_pointwise`). Results equal `F.linear` up to fp32 summation order.

The swap is applied from outside the model, for inference only, and replaces whole modules: each
`nn.Linear` becomes a `PackedLinear`, and a module that declares `fused_projections` becomes an
instance of a subclass generated from that declaration (as FSDP2's `fully_shard` turns a module into
an `FSDP<Module>`) whose projection method computes one packed matrix; the model's own forward has
a single path. Packed layers hold no `weight` parameter (so `state_dict()` no longer lists them and
they do not train). Save or convert a model before preparing it. Anywhere else (GPU, non-fp32
weights, a PyTorch build without oneDNN) the model is returned untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["PackedLinear", "can_prepack", "prepare_for_cpu_inference"]

logger = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """`y = x W^T + b` with `W` prepacked for oneDNN (inference only).

    `split_sizes` are the output widths of the projections packed together (`from_linears`), in order;
    `(out_features,)` for a single one.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, batch_size_hint: int = 8) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.split_sizes: tuple[int, ...] = (self.out_features,)
        with torch.no_grad():
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size_hint)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linears(cls, linears: list[nn.Linear], batch_size_hint: int = 8) -> PackedLinear:
        """One packed projection computing `cat([l(x) for l in linears], -1)`."""
        weight = torch.cat([lin.weight.detach() for lin in linears])
        bias = None if linears[0].bias is None else torch.cat([lin.bias.detach() for lin in linears])
        packed = cls(weight, bias, batch_size_hint)
        packed.split_sizes = tuple(lin.out_features for lin in linears)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        parts = f", split_sizes={self.split_sizes}" if len(self.split_sizes) > 1 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{parts}"


def can_prepack(model: nn.Module) -> bool:
    """True when every parameter is an fp32 CPU tensor, the model computes in fp32 (weights stored in fp32
    but computed in bf16/fp16 reach the linears as bf16/fp16 under autocast, which the packed fp32 kernel
    does not take) and this PyTorch has oneDNN."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    compute_dtype = getattr(getattr(model, "config", None), "compute_dtype", None)
    if isinstance(compute_dtype, torch.dtype) and compute_dtype != torch.float32:
        return False
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def _fusable(module: nn.Module, parts: tuple[str, ...]) -> list[nn.Linear] | None:
    linears = [getattr(module, name, None) for name in parts]
    if not all(type(lin) is nn.Linear for lin in linears):  # e.g. LoRA-wrapped: left as they are
        return None
    if len({lin.in_features for lin in linears}) != 1 or len({lin.bias is None for lin in linears}) != 1:
        return None
    return linears


def _fused_projection(fused_name: str) -> Callable:
    """A projection method computing its parts with the packed matrix `fused_name`, split back in order."""

    def project(self: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused = getattr(self, fused_name)
        return fused(x).split(fused.split_sizes, dim=-1)

    return project


_PACKED_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _packed_class(cls: type, methods: frozenset[str]) -> type:
    """`cls` with the projection `methods` (keys of its `fused_projections`) computed by packed matrices;
    made once per class and set of methods."""
    key = (cls, methods)
    if key not in _PACKED_CLASSES:
        body = {method: _fused_projection(cls.fused_projections[method][0]) for method in sorted(methods)}
        _PACKED_CLASSES[key] = type(f"Packed{cls.__name__}", (cls,), {"__module__": cls.__module__, **body})
    return _PACKED_CLASSES[key]


@torch.no_grad()
def prepare_for_cpu_inference(model: nn.Module, batch_size_hint: int = 8) -> nn.Module:
    """Prepack every `nn.Linear` of `model` for oneDNN when `can_prepack(model)`; returns `model`.

    Puts the model in eval mode. A module declares projections that read the same input in
    `fused_projections = {method: (fused_name, parts)}`, where `method(x)` returns the outputs of the
    `parts` in order (`{"project_qkv": ("wqkv", ("wq", "wk", "wv"))}` for Llama's attention,
    `{"project_gate_up": ("w13", ("w1", "w3"))}` for its feed-forward). When the parts are plain
    `nn.Linear`s they become one packed matrix `fused_name` and the module's class becomes a generated
    subclass whose `method` runs it: one call instead of three or two per layer, and a wider matrix
    streams closer to the memory bandwidth. Tied weights (e.g. `lm_head` sharing the embedding) get
    their own packed copy; the embedding keeps its tensor.

    `batch_size_hint` is the batch oneDNN chooses the weight layout for. With 1 it keeps the plain
    layout and its matrix-vector path, which on x86 runs at about half the speed of the blocked layout
    it picks for 2 and more, even for a batch of one (see `bench/generate.py`); 8 serves batch-1
    decode, batched decode and prefill alike.
    """
    if not can_prepack(model):
        logger.info("prepare_for_cpu_inference: not an fp32 CPU model with oneDNN available; left unchanged")
        return model
    model.eval()
    for module in list(model.modules()):
        fused_methods = set()
        for method, (fused_name, parts) in getattr(module, "fused_projections", {}).items():
            linears = _fusable(module, parts)
            if linears is not None:
                for name in parts:
                    delattr(module, name)
                setattr(module, fused_name, PackedLinear.from_linears(linears, batch_size_hint))
                fused_methods.add(method)
        if fused_methods:
            module.__class__ = _packed_class(type(module), frozenset(fused_methods))
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, PackedLinear(child.weight, child.bias, batch_size_hint))
    return model
