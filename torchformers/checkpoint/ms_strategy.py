"""MindSpore parallel strategy files, and per-rank sliced checkpoints merged or resliced with them.

A MindSpore (auto-)parallel run saves one sliced `.ckpt` per rank (`rank_N/`) and a strategy file per
rank (`strategy/ckpt_strategy_rank_N.ckpt`, or one file merged by `mindspore.merge_pipeline_strategys`,
whose names carry a `<stage>-` prefix). The file is a protobuf `ParallelStrategyMap` (mindspore
`ccsrc/utils/node_strategy.proto`, proto2, package `mindspore.straspb`); for each parameter its
`ParallelLayouts` hold:

* `dev_matrix`: the device grid, e.g. `[dp, mp]`; a rank's coordinate is its index in row-major order;
* `tensor_map`: per tensor dimension, the grid axis that splits it counted from the right (`0` is the
  last axis of `dev_matrix`), or `-1` for none;
* `opt_weight_shard_size` / `opt_weight_shard_step`: the optimizer shard (parallel optimizer): the grid
  axes the tensor is *not* split over are taken from the right until their product is the shard size
  (`-1`: all of them; an axis larger than what is left gives its inner part), and they split dimension
  0 further, inside the model-parallel split of that dimension (MindSpore `parallel/_tensor.py`
  `_construct_tensor_layout_for_opt_shard`);
* `field` and `param_split_shape` (embedding field split, uneven splits): not supported here, refused.

Each rank's slice is a block of the full tensor: per dimension, `n` equal blocks and the rank's block
index `k`. Merging places every rank's slice at its block (ranks holding the same block hold copies);
slicing takes the block out. A JSON strategy file (`parallel_layout_item` objects) is read too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from torchformers.checkpoint.errors import CheckpointError

__all__ = ["Layout", "ParallelStrategyMap", "merge_slices", "pipeline_stages", "read_strategy", "slice_tensor"]

_F = descriptor_pb2.FieldDescriptorProto


def _build_schema():
    """`ParallelStrategyMap` and its parts from node_strategy.proto (field numbers as MindSpore declares them)."""
    file = descriptor_pb2.FileDescriptorProto(name="torchformers_node_strategy.proto", package="mindspore.straspb")
    file.syntax = "proto2"

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = file.message_type.add(name=name)
        for fname, number, kind, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=kind, label=label)
            if type_name:
                field.type_name = ".mindspore.straspb." + type_name

    rep, req = _F.LABEL_REPEATED, _F.LABEL_REQUIRED
    message("ParallelStrategy", ("dim", 1, _F.TYPE_UINT32, rep, ""))
    message("ParallelStrategys", ("stage", 1, _F.TYPE_UINT32, req, ""),
            ("parallel_strategy", 2, _F.TYPE_MESSAGE, rep, "ParallelStrategy"))  # fmt: skip
    message("ParallelStrategyItem", ("node_name", 1, _F.TYPE_STRING, req, ""),
            ("parallel_strategys", 2, _F.TYPE_MESSAGE, req, "ParallelStrategys"))  # fmt: skip
    message("DevMatrix", ("dim", 1, _F.TYPE_UINT32, rep, ""))
    message("TensorMap", ("dim", 1, _F.TYPE_INT32, rep, ""))
    message("ParamSplitShape", ("dim", 1, _F.TYPE_INT64, rep, ""))
    message("IndicesOffset", ("dim", 1, _F.TYPE_INT64, rep, ""))
    message(
        "ParallelLayouts",
        ("dev_matrix", 1, _F.TYPE_MESSAGE, rep, "DevMatrix"),
        ("tensor_map", 2, _F.TYPE_MESSAGE, rep, "TensorMap"),
        ("param_split_shape", 3, _F.TYPE_MESSAGE, rep, "ParamSplitShape"),
        ("indices_offset", 4, _F.TYPE_MESSAGE, rep, "IndicesOffset"),
        ("field", 5, _F.TYPE_INT32, req, ""),
        ("opt_weight_shard_step", 6, _F.TYPE_INT32, req, ""),
        ("opt_weight_shard_size", 7, _F.TYPE_INT32, req, ""),
    )
    message("ParallelLayoutItem", ("param_name", 1, _F.TYPE_STRING, req, ""),
            ("parallel_layouts", 2, _F.TYPE_MESSAGE, req, "ParallelLayouts"))  # fmt: skip
    message(
        "ParallelStrategyMap",
        ("current_stage", 1, _F.TYPE_UINT32, req, ""),
        ("parallel_strategy_item", 2, _F.TYPE_MESSAGE, rep, "ParallelStrategyItem"),
        ("parallel_layout_item", 3, _F.TYPE_MESSAGE, rep, "ParallelLayoutItem"),
    )
    pool = descriptor_pool.DescriptorPool()  # private pool: no clash with MindSpore's own copy of the schema
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mindspore.straspb.ParallelStrategyMap"))


ParallelStrategyMap = _build_schema()
_STAGE_PREFIX = re.compile(r"^\d+-")


@dataclass(frozen=True)
class Layout:
    """How one parameter is split over the ranks of its pipeline stage (see the module docstring)."""

    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    opt_shard_size: int = 0
    opt_shard_step: int = 0

    @property
    def device_count(self) -> int:
        return math.prod(self.dev_matrix)

    def _coordinate(self, rank: int) -> list[int]:
        coordinate = []
        for size in reversed(self.dev_matrix):
            coordinate.insert(0, rank % size)
            rank //= size
        return coordinate

    def _opt_axes(self) -> list[tuple[int, int]]:
        """`(size, inner block)` of each grid axis the optimizer shard uses, outermost first; a part of an
        axis is its inner (fastest-varying) part."""
        if self.opt_shard_size == 0 or self.opt_shard_step == 0:
            return []
        used = {len(self.dev_matrix) - 1 - m for m in self.tensor_map if m != -1}
        repeated = [i for i, size in enumerate(self.dev_matrix) if i not in used and size > 1]
        left = math.prod(self.dev_matrix[i] for i in repeated) if self.opt_shard_size == -1 else self.opt_shard_size
        axes = []
        for i in reversed(repeated):
            size = self.dev_matrix[i]
            if left < size:
                if size % left:
                    raise CheckpointError(f"optimizer shard {self.opt_shard_size} does not divide grid axis {size}")
                size = left
            elif left % size:
                raise CheckpointError(f"optimizer shard {self.opt_shard_size} does not split grid {self.dev_matrix}")
            axes.insert(0, (i, size))
            left //= size
            if left == 1:
                break
        if left != 1:
            raise CheckpointError(f"optimizer shard size {self.opt_shard_size} exceeds the unused grid axes")
        return axes

    def blocks(self, rank: int) -> list[tuple[int, int]]:
        """Per tensor dimension, `(number of blocks, this rank's block index)`."""
        coordinate = self._coordinate(rank)
        out = []
        for m in self.tensor_map:
            axis = len(self.dev_matrix) - 1 - m
            out.append((1, 0) if m == -1 else (self.dev_matrix[axis], coordinate[axis]))
        opt = self._opt_axes()
        if opt and out:
            n, k = out[0]
            for axis, size in opt:  # row-major over the optimizer axes, outermost first
                n, k = n * size, k * size + coordinate[axis] % size
            out[0] = (n, k)
        return out


def _block_index(shape: Sequence[int], blocks: list[tuple[int, int]], name: str) -> tuple[slice, ...]:
    index = []
    for dim, (size, (n, k)) in enumerate(zip(shape, blocks)):
        if size % n:
            raise CheckpointError(f"tensor {name!r}: dimension {dim} of size {size} does not split into {n} blocks")
        step = size // n
        index.append(slice(k * step, (k + 1) * step))
    return tuple(index)


def slice_tensor(full: torch.Tensor, layout: Layout, rank: int, name: str = "") -> torch.Tensor:
    """The slice of `full` that `rank` (its index within its pipeline stage) holds under `layout`."""
    if len(layout.tensor_map) != full.dim():
        raise CheckpointError(f"tensor {name!r}: strategy maps {len(layout.tensor_map)} dims, tensor has {full.dim()}")
    return full[_block_index(full.shape, layout.blocks(rank), name)].clone()


def merge_slices(slices: Sequence[torch.Tensor], layout: Layout, name: str = "") -> torch.Tensor:
    """The full tensor from the slices of all ranks of its pipeline stage, in rank order."""
    if len(slices) != layout.device_count:
        raise CheckpointError(
            f"tensor {name!r}: {len(slices)} ranks hold it, its strategy (device matrix {list(layout.dev_matrix)}) "
            f"splits it over {layout.device_count}"
        )
    first = slices[0]
    if len(layout.tensor_map) != first.dim():
        raise CheckpointError(f"tensor {name!r}: strategy maps {len(layout.tensor_map)} dims, slice has {first.dim()}")
    per_rank = [layout.blocks(rank) for rank in range(len(slices))]
    shape = [size * n for size, (n, _) in zip(first.shape, per_rank[0])]
    full = torch.empty(shape, dtype=first.dtype)
    filled = torch.zeros([n for n, _ in per_rank[0]], dtype=torch.bool)
    for rank, (piece, blocks) in enumerate(zip(slices, per_rank)):
        if tuple(piece.shape) != tuple(first.shape):
            raise CheckpointError(f"tensor {name!r}: rank {rank} holds shape {list(piece.shape)}, "
                                  f"rank 0 holds {list(first.shape)}")  # fmt: skip
        full[_block_index(shape, blocks, name)] = piece
        filled[tuple(k for _, k in blocks)] = True
    if not bool(filled.all()):
        raise CheckpointError(f"tensor {name!r}: the ranks' slices do not cover the tensor under its strategy")
    return full


# ------------------------------------------------------------------------------------------ reading
def _layout(name: str, dev_matrix, tensor_map, field: int, split_shape, step: int, size: int, path) -> Layout:
    if field:
        raise CheckpointError(path, f"field split (field={field}) is not supported", tensor=name)
    if split_shape:
        raise CheckpointError(path, "uneven split (param_split_shape) is not supported", tensor=name)
    if any(isinstance(m, (list, tuple)) for m in tensor_map):
        raise CheckpointError(path, "a tensor dimension split over several grid axes is not supported", tensor=name)
    return Layout(tuple(int(d) for d in dev_matrix), tuple(int(m) for m in tensor_map), int(size), int(step))


def _read_proto(path: Path) -> dict[str, Layout]:
    message = ParallelStrategyMap()
    try:
        message.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise CheckpointError(path, f"not a MindSpore strategy file (ParallelStrategyMap: {exc})") from None
    out = {}
    for item in message.parallel_layout_item:
        layouts = item.parallel_layouts
        maps = [list(t.dim) for t in layouts.tensor_map]
        tensor_map = maps[0] if len(maps) == 1 else [m for m in maps if m]  # several: one list per tensor dim
        if len(maps) > 1:
            tensor_map = [m[0] if len(m) == 1 else m for m in tensor_map]
        split = [list(s.dim) for s in layouts.param_split_shape]
        out[item.param_name] = _layout(
            item.param_name,
            layouts.dev_matrix[0].dim if layouts.dev_matrix else [],
            tensor_map,
            layouts.field,
            split and split[0],
            layouts.opt_weight_shard_step,
            layouts.opt_weight_shard_size,
            path,
        )
    return out


def _read_json(path: Path) -> dict[str, Layout]:
    try:
        items = json.loads(path.read_text())["parallel_layout_item"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        message = f"not a MindSpore strategy file (JSON with parallel_layout_item: {exc!r})"
        raise CheckpointError(path, message) from None
    return {
        name: _layout(name, v["dev_matrix"], v["tensor_map"], v.get("field", 0), v.get("param_split_shape"),
                      v.get("opt_weight_shard_step", 0), v.get("opt_weight_shard_size", 0), path)  # fmt: skip
        for name, v in items.items()
    }


def _strip_stage(layouts: Mapping[str, Layout]) -> dict[str, Layout]:
    """A merged file (`merge_pipeline_strategys`) names parameters `<stage>-<name>`."""
    if layouts and all(_STAGE_PREFIX.match(n) for n in layouts):
        return {_STAGE_PREFIX.sub("", n, count=1): v for n, v in layouts.items()}
    return dict(layouts)


def read_strategy(path: str | Path) -> dict[str, Layout]:
    """`{parameter name: Layout}` from a strategy file (`.ckpt` protobuf or `.json`) or a folder of them
    (one per rank or stage, as `src_strategy_path_or_dir` names it: their union)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "strategy file or folder does not exist")
    files: Iterable[Path] = [path]
    if path.is_dir():
        files = sorted([*path.glob("*.ckpt"), *path.glob("*.json")])
        if not files:
            raise CheckpointError(path, "strategy folder holds no .ckpt or .json strategy files")
    out: dict[str, Layout] = {}
    for file in files:
        part = _strip_stage(_read_json(file) if file.suffix == ".json" else _read_proto(file))
        for name, layout in part.items():
            if name in out and out[name] != layout:
                raise CheckpointError(file, "strategy differs from another strategy file's", tensor=name)
            out[name] = layout
    return out


def pipeline_stages(path: str | Path) -> set[int]:
    """The pipeline stages a strategy file (or folder of them) describes: `<stage>-` names of a merged file,
    else the `stage` of its operator strategies (one stage, 0, for a file without either)."""
    path = Path(path)
    files = sorted(path.glob("*.ckpt")) if path.is_dir() else [path]
    stages: set[int] = set()
    for file in files:
        if file.suffix == ".json":
            continue
        message = ParallelStrategyMap()
        try:
            message.ParseFromString(file.read_bytes())
        except DecodeError:
            continue  # read_strategy reports it
        names = [item.param_name for item in message.parallel_layout_item]
        if names and all(_STAGE_PREFIX.match(n) for n in names):
            stages.update(int(n.split("-", 1)[0]) for n in names)
        else:
            stages.update(item.parallel_strategys.stage for item in message.parallel_strategy_item)
    return stages or {0}
