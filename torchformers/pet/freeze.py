"""Freezing for every pet method: only the method's own weights train, as `freeze_include` /
`freeze_exclude` adjust (MindFormers' `pet_config` keys)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn


def freeze_all_but(
    model: nn.Module,
    is_trainable: Callable[[str], bool],
    freeze_include: Iterable[str],
    freeze_exclude: Iterable[str],
    match: Callable[[str, str], bool],
) -> tuple[int, int]:
    """Set `requires_grad` on every parameter: `is_trainable(name)`, made trainable by a `freeze_exclude`
    pattern and frozen by a `freeze_include` one (`match(pattern, name)`). Returns (trainable, total) counts."""

    include, exclude = list(freeze_include), list(freeze_exclude)
    for name, param in model.named_parameters():
        trainable = is_trainable(name)
        if any(match(p, name) for p in exclude):
            trainable = True
        if any(match(p, name) for p in include):
            trainable = False
        param.requires_grad_(trainable)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
