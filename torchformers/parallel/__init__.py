"""Parallelism applied from outside the model: process group, device mesh, FSDP2 / TP / PP."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed"]


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); a no-op when alone."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
