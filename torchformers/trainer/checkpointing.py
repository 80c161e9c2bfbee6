"""Train states (one process's training checkpoint): MindFormers' layout, written atomically, read back
for exact resume.

A train state is the weights plus the optimizer moments in one tensors file and the loop position in
`<file>.json`; weights alone are read and loaded by `torchformers.checkpoint.loader`, sharded train
states by `torchformers.parallel.checkpoint`, LoRA adapters by `torchformers.pet.lora`.

Layout (MindFormers `CheckpointMonitor`, spec §9.3):
`<output_dir>/checkpoint/rank_<r>/<prefix>_rank_<r>-<epoch>_<step>.<safetensors|ckpt>` holds the
weights, the optimizer moments (`adam_m.<name>`, `adam_v.<name>`, `adam_step.<name>`, MindSpore's
names for the Adam states) and nothing else; next to it `<same name>.json` holds the resume
information (`epoch_num`, `step_num`, `global_step`, `loss_scale`, `global_batch_size`, the
scheduler, the data position and every RNG state). `meta.json` in the rank folder names the last
complete checkpoint (`last_epoch`, `last_step`, `last_ckpt_file`) and is what `resume_training: True`
reads.

Each file is written to a temporary name in the same folder, flushed to disk and renamed into place;
`meta.json` is replaced last. A process killed at any moment (even `kill -9`) therefore leaves the
previous checkpoint and a `meta.json` that points at a complete one.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchformers import checkpoint as checkpoint_formats
from torchformers.checkpoint.loader import dumps_metadata, load_state_into, read_weights
from torchformers.errors import ConfigError
from torchformers.tools.logger import logger
from torchformers.utils import atomic_write_bytes

__all__ = [
    "atomic_write_bytes",
    "checkpoint_dir",
    "find_resume_checkpoint",
    "get_rng_state",
    "is_train_state_file",
    "load_train_state",
    "model_state_to_save",
    "read_weights",
    "save_train_state",
    "set_rng_state",
    "weights_of_train_state",
]

OPTIM_PREFIX = {"exp_avg": "adam_m", "exp_avg_sq": "adam_v", "step": "adam_step", "max_exp_avg_sq": "adam_vmax"}
_PREFIX_TO_KEY = {v: k for k, v in OPTIM_PREFIX.items()}
# optimizer tensors are `<prefix>.<parameter name>`; other optimizer states are saved as `optim_<key>.<name>`
_OPTIM_NAME_PREFIXES = (*(f"{p}." for p in _PREFIX_TO_KEY), "optim_")


def checkpoint_dir(output_dir: str | Path, rank: int = 0, kind: str = "checkpoint") -> Path:
    return Path(output_dir) / kind / f"rank_{rank}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    # keeps the suffix, since the writer picks the format from it
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        # looked up on the package at call time, so a replaced writer (fault-injection tests) takes effect
        checkpoint_formats.save_checkpoint(tensors, tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def model_state_to_save(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Named parameters and persistent buffers, each tensor once (a tied weight keeps its first name)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    params = dict(model.named_parameters())
    for name, tensor in model.state_dict().items():
        if trainable_only and not (name in params and params[name].requires_grad):
            continue
        key = id(params[name]) if name in params else None
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


# ------------------------------------------------------------------------------------------ RNG
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ------------------------------------------------------------------------------------------ save / load
def _optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                prefix = OPTIM_PREFIX.get(key, f"optim_{key}")
                tensors[f"{prefix}.{names[id(p)]}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return tensors, groups


def is_train_state_file(path: str | Path | None) -> bool:
    """A train state: a tensors file with its resume information `<file>.json` next to it."""
    return isinstance(path, (str, Path)) and Path(path).is_file() and Path(f"{path}.json").is_file()


# step counters and loss-scale state MindFormers' CheckpointMonitor stores inside a training `.ckpt`
_MINDFORMERS_SCALARS = frozenset(
    ("epoch_num", "step_num", "global_step", "loss_scale", "global_batch_size", "current_iterator_step",
     "last_overflow_iterator_step", "scale_sense", "beta1_power", "beta2_power")
)  # fmt: skip


def weights_of_train_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model weights of a train state's tensors (the optimizer moments and step counters left out)."""
    return {
        k: v for k, v in tensors.items() if not k.startswith(_OPTIM_NAME_PREFIXES) and k not in _MINDFORMERS_SCALARS
    }


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, info: dict) -> None:
    """Write weights + optimizer state to `path` and `info` (JSON) to `path + .json`, both atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = model_state_to_save(model)
    if optimizer is not None:
        optim_tensors, groups = _optimizer_tensors(model, optimizer)
        tensors.update(optim_tensors)
        info = {**info, "optimizer_param_groups": groups}
    atomic_write_bytes(Path(str(path) + ".json"), dumps_metadata(info))
    _fsync_dir(path.parent)
    atomic_save_tensors(tensors, path)


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights (through the one loader, strict) and optimizer state from the train state `path`;
    returns its resume information."""
    info_path = Path(str(path) + ".json")
    if not info_path.is_file():
        raise ConfigError(f"resume checkpoint {path} has no resume information {info_path.name} next to it")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    tensors = read_weights(path)
    load_state_into(model, weights_of_train_state(tensors), source=str(path))
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        state: dict[int, dict] = {}
        index = 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                entry = {}
                for prefix in (*_PREFIX_TO_KEY, *{k.split(".", 1)[0] for k in tensors if k.startswith("optim_")}):
                    name = f"{prefix}.{names[id(p)]}"
                    if name in tensors:
                        key = _PREFIX_TO_KEY.get(prefix, prefix[len("optim_") :])
                        entry[key] = tensors[name].to(p.device) if key != "step" else tensors[name]
                if entry:
                    state[index] = entry
                index += 1
        groups = info.get("optimizer_param_groups") or [{} for _ in optimizer.param_groups]
        sd = optimizer.state_dict()
        for saved, current in zip(groups, sd["param_groups"]):
            current.update({k: v for k, v in saved.items() if k in current and k != "params"})
            if "betas" in current and isinstance(current["betas"], list):
                current["betas"] = tuple(current["betas"])
        sd["state"] = state
        optimizer.load_state_dict(sd)
    return info


def find_resume_checkpoint(output_dir: str | Path, resume, rank: int = 0) -> Path | None:
    """The checkpoint `resume_training` names: True -> the last one in meta.json, a string -> that file."""
    if not resume:
        return None
    folder = checkpoint_dir(output_dir, rank)
    if isinstance(resume, str):
        for candidate in (Path(resume), folder / resume):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"resume_training {resume!r}: no such checkpoint file (also looked in {folder})")
    meta = folder / "meta.json"
    if meta.is_file():
        last = json.loads(meta.read_text(encoding="utf-8")).get("last_ckpt_file")
        if last and (folder / last).is_file() and (folder / (last + ".json")).is_file():
            return folder / last
    complete = [p for p in folder.glob("*") if p.suffix in (".safetensors", ".ckpt") and Path(f"{p}.json").is_file()]
    if complete:
        return max(complete, key=lambda p: p.stat().st_mtime)
    logger.warning("resume_training: no checkpoint under %s; training starts from the beginning", folder)
    return None
