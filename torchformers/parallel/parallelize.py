"""Apply `parallel_config` to a single-device model: TP -> activation checkpointing -> compile -> FSDP2.

The order is torchtitan's (`parallelize_llama`): tensor parallelism first (DTensor plans on whole
`nn.Linear`s), then activation checkpointing and `torch.compile` per decoder layer, then FSDP2
`fully_shard` per layer and on the root. Pipeline parallelism first cuts the model to its stage.
`build_parallel_model` builds the model on the meta device, applies the same plan and only then
allocates each rank's shards, so no rank ever holds the whole model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from torchformers.parallel.activation_checkpoint import apply_activation_checkpointing
from torchformers.parallel.checkpoint import load_weights_into
from torchformers.parallel.mesh import ParallelDims
from torchformers.parallel.parts import decoder_layers
from torchformers.parallel.pipeline_parallel import split_into_stage
from torchformers.tools.logger import logger
from torchformers.tools.register.build import build_model

__all__ = ["ParallelPlan", "apply_fsdp", "build_parallel_model", "parallelize_model"]


@dataclass
class ParallelPlan:
    """What `parallelize_model` did: the mesh, this rank's coordinates, the stage's layers.

    The training step for the layout (`torchformers.trainer.pipeline_step.parallel_train_step`) reads the
    meshes from here and builds its pipeline schedule with `pipeline_parallel.build_pipeline_schedule`.
    """

    dims: ParallelDims
    mesh: object  # DeviceMesh
    model: nn.Module
    device: torch.device
    layer_ids: list[int] = field(default_factory=list)

    @property
    def dp_mesh(self):
        return self.mesh["dp_shard"] if self.dims.dp_shard > 1 else self.mesh["dp_replicate"]

    @property
    def pp_mesh(self):
        return self.mesh["pp"]

    @property
    def writes_weights(self) -> bool:
        """Whether this rank writes whole-tensor weight files (`checkpoint_network/`): one per pipeline stage."""
        return self.dp_mesh.get_local_rank() == 0 and self.mesh["tp"].get_local_rank() == 0


def apply_fsdp(model: nn.Module, dp_mesh, *, reshard_after_forward: bool = True, mp_policy=None) -> None:
    """FSDP2 `fully_shard` on each decoder layer (the spec's `parallel.layers`), then on the root (which takes
    the rest).

    On a 1-D mesh parameters, gradients and optimizer state are sharded; on the 2-D
    ("dp_replicate", "dp_shard") mesh with a shard size of 1 they are replicated and gradients
    all-reduced (the replicate form of FSDP2).
    """
    # start-up time: FSDP2 is only loaded when data parallelism is used
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    kwargs["mp_policy"] = mp_policy or MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def parallelize_model(
    model: nn.Module,
    dims: ParallelDims,
    device: torch.device,
    *,
    recompute: bool = False,
    compile: bool = False,
    training: bool = True,
    src_data_rank: int | None = 0,
    mp_policy=None,
) -> ParallelPlan:
    """Shard `model` in place for `dims` on the current process group; returns the plan.

    Args:
        model: a single-device model of a registered family (its `ModelSpec` says where the layers, embedding
            and head are), on `device` or on the meta device.
        dims: the degrees (`parallel_dims_from_config`).
        device: this rank's device.
        recompute: activation checkpointing of each decoder layer.
        compile: `torch.compile` each decoder layer.
        training: False turns sequence parallelism off (decoding steps have one token).
        src_data_rank: 0 scatters rank 0's weights; None uses each rank's own (identical or meta) copy.
        mp_policy: an FSDP2 `MixedPrecisionPolicy` (e.g. bf16 parameters with fp32 reduction).
    """
    mesh = dims.build_mesh(device.type)
    if dims.pp > 1:
        layer_ids = split_into_stage(model, mesh["pp"].get_local_rank(), dims.pp)
    else:
        layer_ids = list(range(len(decoder_layers(model))))
    if dims.tp > 1:
        # start-up time: DTensor's tensor-parallel styles are only loaded when tensor parallelism is used
        from torchformers.parallel.tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(
            model,
            mesh["tp"],
            sequence_parallel=dims.sequence_parallel and training,
            vocab_parallel=dims.vocab_parallel,
            src_data_rank=src_data_rank,
        )
    if recompute:
        apply_activation_checkpointing(model)
    if compile:
        for layer in decoder_layers(model):
            layer.compile()
    if dims.dp > 1:
        dp_mesh = mesh["dp_shard"] if dims.dp_shard > 1 else mesh["dp_replicate", "dp_shard"]
        if src_data_rank is not None and dims.tp == 1:
            _broadcast_params(model, mesh["dp_replicate", "dp_shard"])
        apply_fsdp(model, dp_mesh, mp_policy=mp_policy)
    logger.info(
        "parallel: dp %d (%s) x tp %d x pp %d%s%s on %d ranks",
        dims.dp, "sharded optimizer" if dims.shard_optimizer else "replicated", dims.tp, dims.pp,
        ", sequence parallel" if dims.sequence_parallel and dims.tp > 1 and training else "",
        ", vocabulary parallel" if dims.vocab_parallel and dims.tp > 1 else "", dims.world_size,
    )  # fmt: skip
    return ParallelPlan(dims, mesh, model, device, layer_ids)


def _broadcast_params(model: nn.Module, mesh) -> None:
    """FSDP2 shards each rank's own copy; make those copies rank 0's so every layout starts from one model."""
    group = mesh._flatten().get_group() if mesh.ndim > 1 else mesh.get_group()
    src = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type != "meta" and not hasattr(tensor, "placements"):
                dist.broadcast(tensor.data, src=src, group=group)


def build_parallel_model(model_config, dims: ParallelDims, device: torch.device, *, training: bool = False,
                         recompute: bool = False, compile: bool = False, checkpoint: str | None = None,
                         mp_policy=None, src_strategy: str | None = None,
                         ) -> tuple[nn.Module, ParallelPlan]:  # fmt: skip
    """Build the model named by `model_config` (`{model_config: {...}, arch: {type: ...}}`) on the meta device,
    shard it, check the sharded layout with `prepare_inputs_for_predict_layout`, then allocate this rank's
    shards on `device` and fill them from `checkpoint` (a sharded folder or a full file) or, without one,
    with the model's random initialisation. With `src_strategy`, `checkpoint` is a folder of MindSpore
    per-rank sliced checkpoints, merged with that strategy file or folder."""
    with torch.device("meta"):
        model = build_model(model_config)
    plan = parallelize_model(
        model, dims, device, recompute=recompute, compile=compile, training=training, src_data_rank=None,
        mp_policy=mp_policy,
    )  # fmt: skip
    _check_layout(model, dims)
    model.to_empty(device=device)
    if hasattr(model, "init_buffers"):
        model.init_buffers(device)
    if checkpoint:
        load_weights_into(model, checkpoint, src_strategy=src_strategy)
    else:  # the model's own initialisation, now on this rank's shards
        model.post_init()
    return model, plan


def _check_layout(model: nn.Module, dims: ParallelDims) -> None:
    """Run the predict-shaped inputs through the sharded meta model: shape errors of the layout surface here,
    before any memory is allocated. Layouts that communicate inside forward cannot run on meta tensors
    and are checked when the first real batch runs."""
    if dims.pp > 1 or dims.dp > 1 or not hasattr(model, "prepare_inputs_for_predict_layout"):
        # (under FSDP2 such a forward would set up its state on the meta parameters)
        return
    inputs = model.prepare_inputs_for_predict_layout()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    except (RuntimeError, NotImplementedError, ValueError) as err:
        if "meta" not in str(err).lower():
            raise
        logger.debug("layout check on meta tensors skipped: %s", err)
    finally:
        model.train(was_training)
    with contextlib.suppress(Exception):
        model.clear_kv_cache()
