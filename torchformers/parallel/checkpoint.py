"""Sharded train states with `torch.distributed.checkpoint` (DCP), resharded on load.

MindFormers writes one sliced `.ckpt` per rank plus a strategy file and re-slices offline or with
`auto_trans_ckpt` (spec §10.3). DCP stores each tensor's global shape and every shard's place in a
`.metadata` file, so a checkpoint saved under one layout (dp2, FSDP2) loads into any other (tp2, pp2,
one process): resharding is always on for DCP folders. MindSpore's per-rank sliced `.ckpt` files are
merged with their strategy file (`auto_trans_ckpt` + `src_strategy_path_or_dir`) and then sharded
like full weights.

Layout under `<output_dir>/checkpoint/`:

* `<prefix>-<epoch>_<step>.distcp/` — the DCP folder shared by all ranks: the model's and the
  optimizer's state under their full parameter names;
* `rank_<r>/<prefix>_rank_<r>-<epoch>_<step>.safetensors` + `.json` — MindFormers' per-rank files:
  the `.safetensors` file holds no tensors, only `sharded_checkpoint` in its metadata (the folder
  above), and the `.json` the rank's resume information, as for single-device train states; `meta.json`
  names the last one, so `resume_training: True` finds it with any number of ranks.

`load_weights_into` fills a sharded model from a DCP folder or from full weights (through the one
loader, `torchformers.checkpoint.loader`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from torchformers.checkpoint.loader import LoadReport, dumps_metadata, load_weights
from torchformers.errors import ConfigError
from torchformers.utils import atomic_write_bytes

__all__ = [
    "full_model_state",
    "is_distributed_model",
    "is_sharded_train_state",
    "load_sharded_train_state",
    "load_weights_into",
    "save_sharded_train_state",
    "sharded_folder_for",
]

SHARDED_KEY = "sharded_checkpoint"


def is_distributed_model(model: nn.Module) -> bool:
    # start-up time: torch.distributed.tensor loads the distributed stack
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters()) or (
        dist.is_initialized() and dist.get_world_size() > 1
    )


def sharded_folder_for(path: Path) -> Path:
    """`.../checkpoint/rank_3/llama_rank_3-1_5.safetensors` -> `.../checkpoint/llama-1_5.distcp`."""
    path = Path(path)
    stem = re.sub(r"_rank_\d+-", "-", path.name[: -len(path.suffix)] if path.suffix else path.name)
    return path.parent.parent / f"{stem}.distcp"


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    # start-up time: torch.distributed.checkpoint is loaded only by runs that use it
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_sharded_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                             info: dict) -> Path:  # fmt: skip
    """Every rank calls this with its own `path`; returns the shared DCP folder."""
    # start-up time: torch.distributed.checkpoint is loaded only by runs that use it
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    folder = sharded_folder_for(path)
    dcp.save(_state(model, optimizer), checkpoint_id=str(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {**info, SHARDED_KEY: folder.name}
    atomic_write_bytes(Path(f"{path}.json"), dumps_metadata(info))
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({}, str(tmp), metadata={SHARDED_KEY: folder.name})
    tmp.replace(path)
    return folder


def _info(path: Path) -> dict | None:
    info_path = Path(f"{path}.json")
    if not info_path.is_file():
        return None
    return json.loads(info_path.read_text(encoding="utf-8"))


def is_sharded_train_state(path) -> bool:
    info = _info(Path(path)) if path else None
    return bool(info and info.get(SHARDED_KEY))


def load_sharded_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load the DCP folder that `path` names into `model` / `optimizer` in their current layout."""
    # start-up time: torch.distributed.checkpoint is loaded only by runs that use it
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    info = _info(path)
    folder = path.parent.parent / info[SHARDED_KEY]
    if not (folder / ".metadata").is_file():
        raise ConfigError(f"checkpoint {path} names the sharded folder {folder}, which is missing or incomplete")
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    return info


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole tensors of the parameters this rank's pipeline stage holds, on CPU (a collective call)."""
    # start-up time: torch.distributed.checkpoint is loaded only by runs that use it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_weights_into(model: nn.Module, checkpoint: str | Path, src_strategy: str | None = None) -> LoadReport | None:
    """Fill a (sharded, materialised) model from a DCP folder, a train state that names one, or full
    weights (a file or Hugging Face folder); each rank keeps only its shards.

    Full weights go through the one loader (`load_state_into`), one tensor at a time (safetensors are
    read lazily); a pipeline stage takes the names it holds. Returns its report (None for DCP).
    """
    # start-up time: torch.distributed.checkpoint is loaded only by runs that use it
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if src_strategy:  # MindSpore per-rank slices: merged into full tensors, then sharded as any full weights
        return load_weights(model, checkpoint, model_is_part=True, src_strategy=src_strategy)
    checkpoint = Path(checkpoint)
    if checkpoint.is_file() and is_sharded_train_state(checkpoint):
        checkpoint = checkpoint.parent.parent / _info(checkpoint)[SHARDED_KEY]
    if checkpoint.is_dir() and (checkpoint / ".metadata").is_file():
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(checkpoint), no_dist=not dist.is_initialized())
        set_model_state_dict(model, state["model"])
        return None
    return load_weights(model, checkpoint, model_is_part=True)
