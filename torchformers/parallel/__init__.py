"""Parallelism applied from outside the model: process group, device mesh, FSDP2 / TP / PP, sharded checkpoints.

`use_parallel: True` + `parallel_config` (MindFormers' `TransformerOpParallelConfig`, spec §10) ->
`parallel_dims_from_config` -> `parallelize_model` (TP -> activation checkpointing -> compile -> FSDP2,
pipeline stages cut first) or `build_parallel_model` (the same on the meta device, then each rank's
shards are allocated and loaded). Where each applies (layers, embedding, head, per-layer plan) comes
from the model's registered `ModelSpec` (`torchformers.parallel.parts`); the training step for a
layout is trainer code (`torchformers.trainer.pipeline_step`). Checkpoints: `torchformers.parallel.checkpoint`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from torchformers.parallel.activation_checkpoint import apply_activation_checkpointing
from torchformers.parallel.mesh import ParallelDims, parallel_dims_from_config
from torchformers.parallel.parallelize import ParallelPlan, apply_fsdp, build_parallel_model, parallelize_model
from torchformers.utils import get_world_size

__all__ = [
    "ParallelDims",
    "ParallelPlan",
    "apply_activation_checkpointing",
    "apply_fsdp",
    "build_parallel_model",
    "init_distributed",
    "parallel_dims_from_config",
    "parallelize_model",
]


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); a no-op when alone."""
    if dist.is_initialized() or get_world_size() == 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
