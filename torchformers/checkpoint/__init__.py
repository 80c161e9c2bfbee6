"""Checkpoint loading and saving by path; the format is taken from the file or folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["load_checkpoint", "save_checkpoint"]


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read every tensor of the checkpoint at `path` into a flat `{name: tensor}` dict."""
    return load_file(str(path))


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: str | Path, *, metadata: dict | None = None) -> None:
    """Write `state_dict` to `path` in the format its suffix names."""
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
