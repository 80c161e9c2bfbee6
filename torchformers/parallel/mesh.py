"""`parallel_config` + `parallel.enable_parallel_optimizer` -> a `DeviceMesh` over the torchrun world.

MindFormers' `TransformerOpParallelConfig` (spec §10.1) names the degrees: `data_parallel` (dp),
`model_parallel` (mp: Megatron column/row sharding of heads and FFN), `pipeline_stage` (pp, with
`micro_batch_num` micro-batches), `use_seq_parallel`, `vocab_emb_dp`. MindSpore accepts
dp x mp x pp <= devices; here the product must equal the torchrun world size, since every rank must
hold a place in the mesh. The mesh has four named dimensions, outermost first:
`("pp", "dp_replicate", "dp_shard", "tp")`. With the parallel optimizer on, the data-parallel ranks
shard parameters, gradients and optimizer state (`dp_shard = dp`, FSDP2); off, they replicate them
(`dp_replicate = dp`, FSDP2 in its replicate/HSDP form), as MindSpore's optimizer sharding switch does.
Options of MindSpore's context that have no counterpart (context_parallel > 1, expert_parallel > 1,
seq_split_num > 1) are refused with a message rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from torchformers.errors import ConfigError
from torchformers.utils import get_world_size

__all__ = ["ParallelDims", "parallel_dims_from_config"]


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of parallelism; `world_size` must equal dp * tp * pp."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    world_size: int = 1
    micro_batch_num: int = 1
    shard_optimizer: bool = False  # parallel.enable_parallel_optimizer
    sequence_parallel: bool = False  # parallel_config.use_seq_parallel
    vocab_parallel: bool = False  # not parallel_config.vocab_emb_dp
    source: str = "the config"

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "micro_batch_num"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.source}: {_KEY[name]} must be an integer >= 1, got {value!r}")
        product = self.dp * self.tp * self.pp
        if product != self.world_size:
            raise ConfigError(
                f"{self.source}: parallel_config.data_parallel ({self.dp}) x model_parallel ({self.tp}) x "
                f"pipeline_stage ({self.pp}) = {product}, but {self.world_size} process(es) were started; "
                f"launch {product} processes (torchrun --nproc_per_node / msrun_launcher.sh WORKER_NUM) "
                "or change parallel_config so the product equals the number of processes"
            )
        if self.pp > 1 and self.micro_batch_num < self.pp:
            raise ConfigError(
                f"{self.source}: parallel_config.micro_batch_num ({self.micro_batch_num}) must be >= "
                f"pipeline_stage ({self.pp})"
            )

    @property
    def dp_shard(self) -> int:
        return self.dp if self.shard_optimizer else 1

    @property
    def dp_replicate(self) -> int:
        return 1 if self.shard_optimizer else self.dp

    def dp_coordinate(self, rank: int) -> int:
        """The data-parallel index of global `rank` in the ("pp", "dp_replicate", "dp_shard", "tp") mesh."""
        return (rank // self.tp) % self.dp

    def build_mesh(self, device_type: str) -> dist.DeviceMesh:
        """The 4-D mesh ("pp", "dp_replicate", "dp_shard", "tp"); needs an initialised process group."""
        return init_device_mesh(
            device_type,
            (self.pp, self.dp_replicate, self.dp_shard, self.tp),
            mesh_dim_names=("pp", "dp_replicate", "dp_shard", "tp"),
        )


_KEY = {
    "dp": "parallel_config.data_parallel",
    "tp": "parallel_config.model_parallel",
    "pp": "parallel_config.pipeline_stage",
    "micro_batch_num": "parallel_config.micro_batch_num",
}


def parallel_dims_from_config(config, world_size: int | None = None) -> ParallelDims:
    """Read `parallel_config` and `parallel` of a MindFormerConfig (or plain dicts) into `ParallelDims`."""
    source = getattr(config, "source_file", None) or "the config"
    pc = config.get("parallel_config") or {}
    par = config.get("parallel") or {}
    if not isinstance(pc, Mapping):
        raise ConfigError(f"{source}: parallel_config must be a mapping, got {type(pc).__name__}")
    for key in ("context_parallel", "expert_parallel", "seq_split_num"):
        value = pc.get(key)
        if value not in (None, 1):
            raise ConfigError(
                f"{source}: parallel_config.{key} is {value!r}; only 1 is supported on torch.distributed "
                "(data, model, pipeline and sequence parallelism are)"
            )
    if world_size is None:
        world_size = get_world_size()
    shard = par.get("enable_parallel_optimizer")
    if shard is None:  # optimizer_shard is MindFormers' deprecated spelling of the same switch
        shard = pc.get("optimizer_shard")
    return ParallelDims(
        dp=_int(pc.get("data_parallel", 1), "data_parallel", source),
        tp=_int(pc.get("model_parallel", 1), "model_parallel", source),
        pp=_int(pc.get("pipeline_stage", 1), "pipeline_stage", source),
        world_size=int(world_size),
        micro_batch_num=_int(pc.get("micro_batch_num", 1), "micro_batch_num", source),
        shard_optimizer=bool(shard),
        sequence_parallel=bool(pc.get("use_seq_parallel", False)),
        # MindFormers' build_parallel_config forces vocab_emb_dp False under pipeline parallelism
        vocab_parallel=not bool(pc.get("vocab_emb_dp", True)),
        source=str(source),
    )


def _int(value, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{source}: parallel_config.{key} must be an integer >= 1, got {value!r}")
    return int(value)
