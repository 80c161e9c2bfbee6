"""The one weight loader: a weights file or folder (or a state dict) into any model, with a report.

Follows Hugging Face `transformers` `PreTrainedModel.from_pretrained` (`_load_state_dict_into_model`
and its `missing_keys` / `unexpected_keys` / `mismatched_keys` report) and MindFormers'
`load_checkpoint` / `load_param_into_net`, which return the parameter names that did not load.

What "checkpoint" means across the package, and where each kind is handled:

* **weights**: a file or folder of tensors under model names, native (MindFormers) or Hugging Face
  (`model.safetensors`, a sharded `model.safetensors.index.json`, a Hugging Face folder, `.ckpt`,
  `.bin`/`.pt`): `read_weights` / `open_weights` here, `load_state_into` to fill a model;
* **train state**: one process's training state, weights + optimizer moments in one `.safetensors`
  (or `.ckpt`) plus the loop position in `<file>.json` (`torchformers.trainer.checkpointing`);
* **sharded train state**: a `torch.distributed.checkpoint` folder (`<prefix>-<epoch>_<step>.distcp/`)
  named by each rank's train-state files (`torchformers.parallel.checkpoint`);
* **adapters**: LoRA adapter weights alone, `adapter_model.safetensors` (`torchformers.pet.lora`).

`load_state_into` is model-agnostic: it reads the model's `hf_key_map` (Hugging Face names are renamed
to native ones), `fused_weights` (MindFormers' `qkv_concat` tensors are split into the model's
parameters), `_tied_weights_keys`, `_keys_to_ignore_on_load_missing` / `_unexpected` (regexes),
and fills meta-device parameters (materialised from the checkpoint), DTensor parameters (each rank
keeps its shards of the full tensor) and plain ones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from torchformers.checkpoint.formats import detect_format, load_checkpoint
from torchformers.checkpoint.ms_strategy import merge_slices, read_strategy
from torchformers.errors import CheckpointError

__all__ = [
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "LoadReport",
    "dumps_metadata",
    "json_default",
    "load_state_into",
    "last_checkpoint",
    "load_weights",
    "merge_sliced_checkpoints",
    "open_weights",
    "rank_checkpoints",
    "rank_folders",
    "read_weights",
    "resolve_weights_path",
]

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


@dataclass
class LoadReport:
    """What `load_state_into` found: names are native (model) names."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, checkpoint, model)
    renamed_from_hf: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def names(items: list) -> str:
            shown = ", ".join(map(str, items[:limit]))
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing in the checkpoint: {names(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (not in the model): {names(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{n} checkpoint {list(a)} vs model {list(b)}" for n, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} with a different shape: {names(shapes)}")
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------ reading
class _LazySafetensors(Mapping):
    """`{name: tensor}` over safetensors files, each tensor read when asked for (memory-mapped)."""

    def __init__(self, files: list[Path]) -> None:
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where: dict[str, Any] = {}
        for file, handle in zip(files, self._handles):
            for name in handle.keys():
                if name in self._where:
                    raise CheckpointError(file, "tensor name appears twice across the checkpoint files", tensor=name)
                self._where[name] = handle

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# ------------------------------------------------------------------------------- MindFormers' layouts
_RANK_FOLDER = re.compile(r"^rank_(\d+)$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.ckpt", "*.index.json", "pytorch_model*.bin")


def rank_folders(path: str | Path) -> dict[int, Path]:
    """`{N: path/rank_N}` for the `rank_N/` subfolders of `path` (MindFormers' per-rank checkpoint layout)."""
    path = Path(path)
    found = {}
    for child in path.iterdir() if path.is_dir() else ():
        match = _RANK_FOLDER.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def last_checkpoint(folder: str | Path) -> Path:
    """The newest `.ckpt` file of `folder` by modification time (MindFormers `get_last_checkpoint`)."""
    folder = Path(folder)
    files = [f for f in folder.glob("*.ckpt") if f.is_file()]
    if not files:
        raise CheckpointError(folder, "holds no .ckpt file (expected MindFormers' rank_N/<prefix>-<epoch>_<step>.ckpt)")
    return max(files, key=lambda f: (f.stat().st_mtime_ns, f.name))


def _current_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def resolve_weights_path(path: str | Path, *, rank: int | None = None) -> Path:
    """The file or folder that `load_checkpoint: path` names, resolved as MindFormers' `load_ckpt` does.

    * a name that does not exist gets `.ckpt` appended when that file exists (`llama_7b` -> `llama_7b.ckpt`);
    * a file, or a folder holding weight files (`*.ckpt`: all of them; the folder `save_pretrained` writes;
      a Hugging Face or safetensors folder), is returned as it is;
    * a folder of `rank_N/` subfolders and no weight files gives the newest `.ckpt` (by modification time)
      of `rank_<rank>/` (`rank`: this process's rank; `rank_0/` when there is no folder for it).
    """
    given = Path(path)
    path = given
    if not path.exists() and path.suffix != ".ckpt" and path.with_name(path.name + ".ckpt").is_file():
        path = path.with_name(path.name + ".ckpt")
    if not path.exists():
        raise CheckpointError(
            given, "does not exist (expected a weights file, a folder of them, or a folder of rank_N/ folders)"
        )
    if path.is_dir() and not any(any(path.glob(p)) for p in _WEIGHT_PATTERNS):
        ranks = rank_folders(path)
        if ranks:
            rank = _current_rank() if rank is None else rank
            return last_checkpoint(ranks.get(rank, ranks[min(ranks)]))
    return path


def _weights_files(path: Path) -> Path:
    """The path the formats layer should read: a model folder's own index or `model.safetensors` first."""
    path = resolve_weights_path(path)
    if path.is_dir():
        for name in (SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME):
            if (path / name).is_file():
                return path / name
    return path


def rank_checkpoints(path: str | Path) -> dict[int, Path]:
    """`{N: newest .ckpt of path/rank_N}`: the per-rank checkpoints of a sliced (distributed) MindFormers run."""
    ranks = rank_folders(path)
    if not ranks:
        raise CheckpointError(path, "has no rank_N/ folders (expected the sliced checkpoints of a distributed run)")
    return {rank: last_checkpoint(folder) for rank, folder in ranks.items()}


def merge_sliced_checkpoints(path: str | Path, strategy: str | Path) -> dict[str, torch.Tensor]:
    """The full tensors of the per-rank sliced checkpoints under `path/rank_N/`, merged with the MindSpore
    strategy file or folder `strategy` (`src_strategy_path_or_dir`; see `ms_strategy`).

    A parameter is held by the ranks of its pipeline stage, in rank order; one the strategy does not list
    (step counters, unsplit tensors) is taken from the first rank that holds it. Every rank's file is
    read into memory (as MindSpore's own merge does).
    """
    layouts = read_strategy(strategy)
    states = {rank: load_checkpoint(file) for rank, file in rank_checkpoints(path).items()}
    names = list(dict.fromkeys(name for state in states.values() for name in state))
    merged = {}
    for name in names:
        holders = [state[name] for state in states.values() if name in state]
        layout = layouts.get(name)
        if layout is None or layout.device_count == 1:
            merged[name] = holders[0]
        else:
            merged[name] = merge_slices(holders, layout, name)
    return merged


def read_weights(
    path: str | Path, *, allow_pickle: bool = False, src_strategy: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file or folder, `{name: tensor}`.

    A folder is read through its `model.safetensors.index.json`, else its `model.safetensors`, else every
    weights file in it (`*.safetensors`, `*.ckpt`, `pytorch_model*.bin`); MindFormers' layouts are resolved
    first (`resolve_weights_path`). With `src_strategy` (a MindSpore strategy file or folder), `path` is
    the folder of a distributed run's `rank_N/` sliced checkpoints and they are merged into full tensors.
    `.bin`/`.pt` files that hold more than tensors need `allow_pickle=True` (trusted files only).
    """
    if src_strategy:
        return merge_sliced_checkpoints(path, src_strategy)
    return load_checkpoint(_weights_files(Path(path)), allow_pickle=allow_pickle)


def open_weights(
    path: str | Path, *, allow_pickle: bool = False, src_strategy: str | Path | None = None
) -> Mapping[str, torch.Tensor]:
    """Like `read_weights`, but safetensors tensors are read only when looked up (one at a time)."""
    if src_strategy:
        return merge_sliced_checkpoints(path, src_strategy)
    target = _weights_files(Path(path))
    fmt, files = detect_format(target)
    if fmt == "safetensors":
        return _LazySafetensors(files)
    return load_checkpoint(target, allow_pickle=allow_pickle)


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for checkpoint metadata: tensors, numpy scalars, sets and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint metadata")


# ------------------------------------------------------------------------------------------ loading
def _native_names(model: nn.Module, names: list[str], own: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
    """`{native name: name in the checkpoint}`; Hugging Face names are renamed through `model.hf_key_map`."""
    key_map = getattr(model, "hf_key_map", None)
    # Hugging Face layout: some name is an external name that is not also a native name of this model
    if key_map is None or not any(key_map.is_external(k) and k not in own for k in names):
        return {k: k for k in names}, False
    return {key_map.to_native(k) if key_map.is_external(k) else k: k for k in names}, True


def _tied_names(model: nn.Module) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    config = getattr(model, "config", None)
    return set(tied) if config is None or getattr(config, "tie_word_embeddings", False) else set()


def load_state_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "<state dict>",
    only: Callable[[str], bool] | None = None,
    model_is_part: bool = False,
) -> LoadReport:
    """Copy `state` (e.g. `read_weights(...)` or `open_weights(...)`) into `model`; returns a `LoadReport`.

    Args:
        strict: missing, unexpected and shape-mismatched names raise `CheckpointError` listing them;
            otherwise they are logged as a warning and the matching tensors load.
        source: what `state` came from, for messages.
        only: fill only the model names it accepts (e.g. LoRA adapters); other model names are not missing.
        model_is_part: the model holds part of what the checkpoint was saved from (a pipeline stage),
            so checkpoint names it lacks are not unexpected (and are never read).

    A name missing from `state` is fine when it is a tied copy (`_tied_weights_keys` with
    `tie_word_embeddings`, or another name of a parameter that is loaded) or matches
    `_keys_to_ignore_on_load_missing`.
    """
    fused = getattr(model, "fused_weights", None)
    if fused is not None:  # MindFormers' qkv_concat tensors become the model's separate parameters
        state = fused.split_state(state, getattr(model, "config", None))
    own = model.state_dict(keep_vars=True)
    if only is not None:
        own = {k: v for k, v in own.items() if only(k)}
    ignore_unexpected = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    names = [k for k in state if not any(p.search(k) for p in ignore_unexpected)]
    where, renamed = _native_names(model, names, own)
    if only is not None:
        where = {k: v for k, v in where.items() if only(k)}
    report = LoadReport(source, renamed_from_hf=renamed)

    loaded_ids = {id(own[k]) for k in where if k in own}
    tied = _tied_names(model)
    ignore_missing = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
    report.missing = [
        k
        for k, v in own.items()
        if k not in where and k not in tied and id(v) not in loaded_ids and not any(p.search(k) for p in ignore_missing)
    ]
    report.unexpected = [] if model_is_part else [k for k in where if k not in own]
    shapes = _shapes(state)
    report.mismatched = [
        (k, shapes(where[k]), tuple(own[k].shape))
        for k in where
        if k in own and shapes(where[k]) != tuple(own[k].shape)
    ]
    if not report.ok:
        message = f"loading {source} into {type(model).__name__}: {report.describe()}"
        if strict:
            raise CheckpointError(message + " (pass strict=False to load the matching tensors anyway)")
        logger.warning(message)
    bad = {n for n, _, _ in report.mismatched}
    _assign(model, own, {k: v for k, v in where.items() if k in own and k not in bad}, state)
    return report


def _shapes(state: Mapping[str, torch.Tensor]) -> Callable[[str], tuple]:
    """name -> shape, without reading the tensor where the source allows (lazy safetensors)."""
    if isinstance(state, _LazySafetensors):
        return lambda name: tuple(state._where[name].get_slice(name).get_shape())
    return lambda name: tuple(state[name].shape)


@torch.no_grad()
def _assign(model: nn.Module, own: Mapping[str, torch.Tensor], where: dict[str, str], state: Mapping) -> None:
    # start-up time: torch.distributed.tensor loads the distributed stack, needed only for sharded models
    from torch.distributed.tensor import DTensor, distribute_tensor

    materialised = False
    for name, key in where.items():
        target, value = own[name], state[key]
        if isinstance(target, DTensor):  # each rank keeps its own shards of the full tensor
            value = value.to(device=target.device, dtype=target.dtype)
            value = distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(value.to_local())
        elif target.is_meta:  # a model built on the meta device: materialise from the checkpoint
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            new = value.to(target.dtype)
            if isinstance(target, nn.Parameter):
                new = nn.Parameter(new, requires_grad=target.requires_grad)
            setattr(module, attr, new)
            materialised = True
        else:
            target.copy_(value)
        del value  # one full tensor alive at a time
    if materialised:
        tie = getattr(model, "tie_weights", None)
        if tie is not None and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
            tie()  # the replaced parameters no longer share memory
        meta_buffers = any(b.is_meta for b in model.buffers())
        if meta_buffers and not any(p.is_meta for p in model.parameters()) and hasattr(model, "init_buffers"):
            model.init_buffers(next(model.parameters()).device)


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    allow_pickle: bool = False,
    src_strategy: str | Path | None = None,
    **kwargs: Any,
) -> LoadReport:
    """`load_state_into(model, open_weights(path))`: a weights file or folder into `model`."""
    state = open_weights(path, allow_pickle=allow_pickle, src_strategy=src_strategy)
    return load_state_into(model, state, strict=strict, source=str(path), **kwargs)


def dumps_metadata(info: dict) -> bytes:
    """`info` as the UTF-8 JSON of a checkpoint's `.json` file."""
    return json.dumps(info, default=json_default).encode()
