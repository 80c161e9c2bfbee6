"""The `strategy/` folder of a tensor- or pipeline-parallel run: how each parameter is laid out on the ranks.

MindFormers writes `<output_dir>/strategy/ckpt_strategy_rank_<r>.ckpt` (MindSpore's strategy protobuf)
when a run is sliced, and its tools read it to merge or re-slice per-rank checkpoints (spec §10.3).
Here each rank writes `<output_dir>/strategy/ckpt_strategy_rank_<r>.json`, plain JSON a person or a
script can read:

    {"format": "torchformers-strategy", "version": 1, "rank": 0, "world_size": 2,
     "mesh": {"names": ["pp", "dp_replicate", "dp_shard", "tp"], "shape": [1, 1, 1, 2], "coordinate": [0, 0, 0, 0]},
     "pipeline": {"stages": 1, "stage": 0, "layers": [0, 1]},
     "parameters": {"model.layers.0.attention.wq.weight": {
         "shape": [64, 64], "dtype": "float32", "placements": {"tp": "Shard(0)"},
         "local_shape": [32, 64], "offset": [0, 0]}, ...}}

`shape` is the whole tensor, `placements` names the mesh dimensions it is split over (`Shard(d)`: split
along tensor dimension d; `Partial`: pending reduction; dimensions where it is replicated are left
out), and `local_shape` / `offset` say which block of the whole tensor this rank holds. Parameters a
pipeline stage does not own are absent from its ranks' files.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from torchformers.utils import atomic_write_bytes

__all__ = ["STRATEGY_DIR", "strategy_file", "write_strategy"]

STRATEGY_DIR = "strategy"
_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def strategy_file(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / STRATEGY_DIR / f"ckpt_strategy_rank_{rank}.json"


def _clean(name: str) -> str:
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def _layout(param) -> dict:
    """Shape, placements and this rank's block of one parameter (a DTensor, or a plain replicated tensor)."""
    entry = {"shape": list(param.shape), "dtype": str(param.dtype).removeprefix("torch."), "placements": {}}
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:  # not distributed: every rank of the stage holds all of it
        entry.update(local_shape=list(param.shape), offset=[0] * param.dim())
        return entry
    names = mesh.mesh_dim_names or tuple(f"dim{i}" for i in range(mesh.ndim))
    for name, placement in zip(names, param.placements):
        if placement.is_shard():
            entry["placements"][name] = f"Shard({placement.dim})"
        elif not placement.is_replicate():
            entry["placements"][name] = "Partial"
    # start-up time: only runs with a device mesh reach this
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offset = compute_local_shape_and_global_offset(param.shape, mesh, param.placements)
    entry.update(local_shape=list(local_shape), offset=list(offset))
    return entry


def write_strategy(model: nn.Module, plan, output_dir: str | Path, rank: int, world_size: int) -> Path:
    """Write this rank's `strategy/ckpt_strategy_rank_<r>.json` for the parallelised `model`; returns its path."""
    mesh = plan.mesh
    names = list(mesh.mesh_dim_names or ())
    coordinate = mesh.get_coordinate() or []
    parameters = {_clean(n): _layout(p) for n, p in model.named_parameters()}
    stage = mesh["pp"].get_local_rank() if "pp" in names else 0
    document = {
        "format": "torchformers-strategy",
        "version": 1,
        "rank": rank,
        "world_size": world_size,
        "mesh": {"names": names, "shape": list(mesh.mesh.shape), "coordinate": list(coordinate)},
        "pipeline": {"stages": plan.dims.pp, "stage": stage, "layers": list(plan.layer_ids)},
        "parameters": parameters,
    }
    path = strategy_file(output_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(document, indent=1) + "\n").encode())
    return path
