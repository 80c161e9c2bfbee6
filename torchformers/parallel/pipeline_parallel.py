"""Pipeline parallelism (`pipeline_stage`, `micro_batch_num`) with `torch.distributed.pipelining`.

The decoder layers (the model's `ModelSpec` `parallel.layers`) are divided evenly over the stages
(earlier stages take the remainder), as MindFormers does without `offset`. Each rank keeps only its
stage's modules: the spec's `first_stage` modules are dropped on every stage but the first, its
`last_stage` modules on every stage but the last, and the layers become a `ModuleDict` keyed by the
original layer numbers, so every parameter keeps its full name and checkpoints move between layouts.

As in torchtitan, a stage is the model itself: the stage runs the forward of the module that holds the
layers, which skips its absent parts (token ids in on the first stage, hidden states between stages,
the final norm on the last). The loss on the last stage is the model's own (`loss_from_hidden`), given
to the schedule by the training step (`torchformers.trainer.pipeline_step`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchformers.errors import ConfigError
from torchformers.parallel.parts import layer_container, parallel_spec_of, set_submodule, submodule_or_none

__all__ = ["build_pipeline_schedule", "split_into_stage", "stage_layer_ids", "stage_module"]


def stage_layer_ids(num_layers: int, num_stages: int, stage: int) -> list[int]:
    base, extra = divmod(num_layers, num_stages)
    start = stage * base + min(stage, extra)
    return list(range(start, start + base + (1 if stage < extra else 0)))


def split_into_stage(model: nn.Module, stage: int, num_stages: int) -> list[int]:
    """Drop from `model` (in place) every module stage `stage` does not run; returns its layer ids."""
    spec = parallel_spec_of(model, "parallel_config.pipeline_stage")
    layers = layer_container(model, "parallel_config.pipeline_stage")
    num_layers = len(layers)
    if num_stages > num_layers:
        raise ConfigError(
            f"parallel_config.pipeline_stage ({num_stages}) exceeds model_config.num_layers ({num_layers})"
        )
    if getattr(model.config, "tie_word_embeddings", False):
        raise ConfigError(
            "parallel_config.pipeline_stage > 1 puts the embedding and the output head on different ranks, so "
            "model_config.tie_word_embeddings must be False"
        )
    ids = stage_layer_ids(num_layers, num_stages, stage)
    kept = list(layers.values() if isinstance(layers, nn.ModuleDict) else layers)
    set_submodule(model, spec.layers, nn.ModuleDict({str(i): kept[i] for i in ids}))
    dropped = (spec.first_stage if stage != 0 else ()) + (spec.last_stage if stage != num_stages - 1 else ())
    for path in dropped:
        set_submodule(model, path, None)
    return ids


def stage_module(model: nn.Module) -> nn.Module:
    """The module a pipeline stage runs: the one holding the spec's layers (its forward skips absent parts)."""
    parent_path = parallel_spec_of(model, "parallel_config.pipeline_stage").layers.rpartition(".")[0]
    module = submodule_or_none(model, parent_path) if parent_path else model
    if module is None:
        raise ConfigError(f"parallel_config.pipeline_stage: {type(model).__name__} has no module at {parent_path!r}")
    return module


def build_pipeline_schedule(model: nn.Module, pp_mesh, micro_batch_num: int, device: torch.device,
                            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):  # fmt: skip
    """A GPipe schedule over `micro_batch_num` micro-batches for this rank's stage of `model` (already cut
    by `split_into_stage`). `loss_fn(output, target)` runs on the last stage; gradients are not rescaled."""
    # start-up time: torch.distributed.pipelining is only loaded when pipeline parallelism is used
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    stage = PipelineStage(stage_module(model), pp_mesh.get_local_rank(), pp_mesh.size(), device,
                          group=pp_mesh.get_group())  # fmt: skip
    return ScheduleGPipe(stage, micro_batch_num, loss_fn=loss_fn, scale_grads=False)
