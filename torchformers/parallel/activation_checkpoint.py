"""Activation checkpointing (`recompute_config.recompute`) applied from outside the model.

Each decoder layer's `forward` is wrapped in `torch.utils.checkpoint` (non-reentrant), so its
activations are recomputed in backward; parameter names stay the same, and it composes with tensor
parallelism, `torch.compile` and FSDP2 (applied in that order, as torchtitan does).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from torchformers.tools.register.config import ConfigError

__all__ = ["apply_activation_checkpointing", "decoder_layers"]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: the first `ModuleList`/`ModuleDict` of the model with children."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
        if isinstance(module, nn.ModuleDict) and len(module) > 0:
            return list(module.values())
    raise ConfigError("recompute_config.recompute: the model has no list of layers to recompute")


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each decoder layer in backward. Returns the number of layers wrapped."""
    from torch.utils.checkpoint import checkpoint

    layers = decoder_layers(model)
    for layer in layers:
        original = layer.forward

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        layer.forward = forward
    return len(layers)
