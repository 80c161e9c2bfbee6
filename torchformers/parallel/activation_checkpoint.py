"""Activation checkpointing (`recompute_config.recompute`) applied from outside the model.

Each decoder layer's `forward` (the layers the model's `ModelSpec` names in `parallel.layers`) is
wrapped in `torch.utils.checkpoint` (non-reentrant), so its activations are recomputed in backward;
parameter names stay the same, and it composes with tensor parallelism, `torch.compile` and FSDP2
(applied in that order, as torchtitan does).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from torchformers.errors import ConfigError
from torchformers.parallel.parts import decoder_layers, submodule_or_none

__all__ = ["apply_activation_checkpointing"]


def apply_activation_checkpointing(model: nn.Module, layers: str | None = None) -> int:
    """Recompute each decoder layer in backward. Returns the number of layers wrapped.

    Args:
        model: the model; its registered `ModelSpec` names the layers (`parallel.layers`).
        layers: a dotted path to an `nn.ModuleList` / `nn.ModuleDict` of blocks, for a model that belongs
            to no registered family.
    """
    if layers is None:
        blocks = decoder_layers(model, "recompute_config.recompute")
    else:
        container = submodule_or_none(model, layers)
        if not isinstance(container, (nn.ModuleList, nn.ModuleDict)):
            raise ConfigError(
                f"recompute_config.recompute: {type(model).__name__} has {type(container).__name__} at "
                f"{layers!r}, expected an nn.ModuleList or nn.ModuleDict of layers"
            )
        blocks = list(container.values()) if isinstance(container, nn.ModuleDict) else list(container)
    for layer in blocks:
        original = layer.forward

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        layer.forward = forward
    return len(blocks)
