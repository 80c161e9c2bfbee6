"""Train states (one process's training checkpoint): MindFormers' layout, written atomically, read back
for exact resume; MindFormers' own training checkpoints resume here too.

A train state is one tensors file (`.ckpt` or `.safetensors`) holding what MindFormers'
`CheckpointMonitor` puts in its `.ckpt` (spec §9.3; `mindformers/core/callback/callback.py`):
the network weights, the optimizer moments under MindSpore's names (`adam_m.<name>`, `adam_v.<name>`;
`adam_step.<name>` for torch's per-parameter step) and the loop position as scalars, `epoch_num`,
`step_num` (steps since the start of training), `global_step` (optimizer steps) and `loss_scale`, plus
`global_batch_size`. The file alone resumes a run. Next to it `<same name>.json` carries what
MindFormers does not keep (every RNG state, the data set's own position, the scheduler description,
the optimizer's hyper-parameters); without it a resume says once what was not restored.

MindFormers' files also hold the optimizer's own scalars (`global_step`, `learning_rate`, in MindSpore
2.x under an `optimizer.` prefix: `optimizer.adam_m.<name>`), the loss-scale cell's `scale_sense`,
`current_iterator_step` and `last_overflow_iterator_step`; they are recognised and never taken for
weights. The Adam step of MindFormers' `AdamW` (bias correction) is its `global_step`.

Layout: `<output_dir>/checkpoint/rank_<r>/<prefix>_rank_<r>-<epoch>_<step>.<ckpt|safetensors>`;
`meta.json` in the rank folder names the last complete checkpoint (`last_epoch`, `last_step`,
`last_ckpt_file`) and is what `resume_training: True` reads. Each file is written to a temporary name
in the same folder, flushed to disk and renamed into place; `meta.json` is replaced last. A process
killed at any moment (even `kill -9`) therefore leaves the previous checkpoint and a `meta.json` that
points at a complete one.
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
from torchformers.errors import CheckpointError, ConfigError
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
    "resume_checkpoint_from",
    "save_train_state",
    "set_rng_state",
    "weights_of_train_state",
]

OPTIM_PREFIX = {"exp_avg": "adam_m", "exp_avg_sq": "adam_v", "step": "adam_step", "max_exp_avg_sq": "adam_vmax"}
# read also under the names other MindSpore / MindFormers optimizers give the same moments: nn.Adam's
# `moment1` / `moment2` / `vhat`, MindFormers' FusedAdamW's `exp_avg` / `exp_avg_sq` / `max_exp_avg_sq`
_PREFIX_TO_KEY = {
    **{v: k for k, v in OPTIM_PREFIX.items()},
    **{"moment1": "exp_avg", "moment2": "exp_avg_sq", "vhat": "max_exp_avg_sq"},
    **{k: k for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")},
}
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
# The loop position MindFormers' CheckpointMonitor appends to its .ckpt, and the dtype/shape it has there.
TRAIN_SCALARS = {
    "epoch_num": (torch.int64, ()),
    "step_num": (torch.int64, ()),
    "global_step": (torch.int32, (1,)),
    "loss_scale": (torch.float32, ()),
    "global_batch_size": (torch.int64, ()),
}
# MindSpore cells' own state in a MindFormers training checkpoint: the optimizer's step and rate, the
# loss-scale cell's scale and overflow counters. Read where they mean something here, never taken for weights.
MINDSPORE_STATE = (
    "scale_sense", "learning_rate", "current_iterator_step", "last_overflow_iterator_step", "beta1_power", "beta2_power"
)  # fmt: skip
_MS_OPTIMIZER = "optimizer."  # MindSpore 2.x names optimizer parameters `optimizer.adam_m.<name>`, ...


def _state_name(name: str) -> str:
    """A training checkpoint name without MindSpore 2.x's `optimizer.` prefix."""
    return name[len(_MS_OPTIMIZER) :] if name.startswith(_MS_OPTIMIZER) else name


def _is_training_state(name: str) -> bool:
    base = _state_name(name)
    return base in TRAIN_SCALARS or base in MINDSPORE_STATE or base.startswith(_OPTIM_NAME_PREFIXES)


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


def _scalar_tensors(info: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, (dtype, shape) in TRAIN_SCALARS.items():
        if info.get(name) is not None:
            out[name] = torch.full(shape, info[name], dtype=dtype)
    return out


def _scalars_of(names) -> set[str]:
    return {n for n in names if n in TRAIN_SCALARS}


def is_train_state_file(path: str | Path | None) -> bool:
    """A train state: a tensors file holding the loop position (`epoch_num`, `step_num`, `global_step`) as
    MindFormers' CheckpointMonitor writes it, or one with its resume information `<file>.json` next to it."""
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return False
    if Path(f"{path}.json").is_file():
        return True
    if Path(path).suffix not in (".ckpt", ".safetensors"):
        return False
    try:
        names = checkpoint_formats.open_checkpoint(path).specs()
    except Exception:  # not a readable tensors file: not a train state
        return False
    return {"epoch_num", "step_num", "global_step"} <= _scalars_of(names)


def weights_of_train_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model weights of a train state's tensors (optimizer moments, loop scalars and MindSpore cell state
    left out)."""
    return {k: v for k, v in tensors.items() if not _is_training_state(k)}


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, info: dict) -> None:
    """Write weights, optimizer state and the loop scalars of `info` (`epoch_num`, `step_num`, `global_step`,
    `loss_scale`, `global_batch_size`) to `path`, and the rest of `info` (JSON) to `path + .json`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = model_state_to_save(model)
    if optimizer is not None:
        optim_tensors, groups = _optimizer_tensors(model, optimizer)
        tensors.update(optim_tensors)
        info = {**info, "optimizer_param_groups": groups}
    tensors.update(_scalar_tensors(info))
    extra = {k: v for k, v in info.items() if k not in TRAIN_SCALARS}
    atomic_write_bytes(Path(str(path) + ".json"), dumps_metadata(extra))
    _fsync_dir(path.parent)
    atomic_save_tensors(tensors, path)


def _read_scalars(tensors: dict[str, torch.Tensor]) -> dict:
    """The loop scalars of a training checkpoint; `global_step` falls back to the optimizer's own."""
    out: dict = {}
    for name in (*TRAIN_SCALARS, "optimizer.global_step", "current_iterator_step", "last_overflow_iterator_step"):
        value = tensors.get(name)
        if value is None or value.numel() != 1:
            continue
        key = _state_name(name)
        number = value.reshape(()).item()
        out.setdefault(key, float(number) if key == "loss_scale" else int(number))
    return out


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict, info: dict, source: str
) -> list[str]:
    """Moments into the optimizer by parameter name; returns the names of parameters that had none."""
    by_base = {_state_name(k): v for k, v in tensors.items() if _state_name(k).startswith(_OPTIM_NAME_PREFIXES)}
    extra_prefixes = {k.split(".", 1)[0] for k in by_base if k.startswith("optim_")}
    names = {id(p): n for n, p in model.named_parameters()}
    global_step = info.get("global_step")
    state: dict[int, dict] = {}
    missing: list[str] = []
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = {}
            for prefix in (*_PREFIX_TO_KEY, *extra_prefixes):
                name = f"{prefix}.{names[id(p)]}"
                if name in by_base:
                    key = _PREFIX_TO_KEY.get(prefix, prefix[len("optim_") :])
                    value = by_base[name]
                    if key != "step":
                        if value.shape != p.shape:
                            raise CheckpointError(
                                source, f"optimizer state has shape {tuple(value.shape)}, the parameter "
                                f"{tuple(p.shape)}", tensor=name,
                            )  # fmt: skip
                        value = value.to(p.device)
                    entry.setdefault(key, value)
            if "exp_avg" in entry and "step" not in entry and global_step is not None:
                # MindFormers' AdamW keeps one step for all parameters: its global_step
                entry["step"] = torch.tensor(float(global_step), dtype=torch.float32)
            if entry:
                state[index] = entry
            elif p.requires_grad:
                missing.append(names[id(p)])
            index += 1
    groups = info.get("optimizer_param_groups") or [{} for _ in optimizer.param_groups]
    sd = optimizer.state_dict()
    for saved, current in zip(groups, sd["param_groups"]):
        current.update({k: v for k, v in saved.items() if k in current and k != "params"})
        if "betas" in current and isinstance(current["betas"], list):
            current["betas"] = tuple(current["betas"])
    sd["state"] = state
    optimizer.load_state_dict(sd)
    return missing


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights (through the one loader, strict) and optimizer state from the train state `path`
    (ours or MindFormers'); returns its resume information.

    `step_num` in the result counts steps since the start of training, as in MindFormers' files. What the
    file cannot give (no `<file>.json`: RNG states, the data set's own position, optimizer
    hyper-parameters) is named in one log line.
    """
    info_path = Path(str(path) + ".json")
    sidecar = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    tensors = read_weights(path)
    scalars = _read_scalars(tensors)
    info = {**sidecar, **scalars}
    if "step_num" not in scalars and "global_step" in sidecar:
        # written before the loop scalars were kept in the file: its step_num counted steps of the epoch
        info["step_num"] = int(sidecar["global_step"])
    if not {"epoch_num", "step_num", "global_step"} & info.keys():
        raise CheckpointError(
            path, "is not a training checkpoint: it holds no epoch_num / step_num / global_step (weights only? "
            "load it with load_checkpoint and resume_training: False)",
        )  # fmt: skip
    info.setdefault("step_num", info.get("global_step", 0))
    info.setdefault("global_step", info["step_num"])
    info.setdefault("epoch_num", 1)
    load_state_into(model, weights_of_train_state(tensors), source=str(path))
    if optimizer is not None:
        missing = _restore_optimizer(optimizer, model, tensors, info, str(path))
        if missing:
            logger.warning(
                "resume: %s holds no optimizer state for %d parameters (%s%s); their moments start at zero",
                path, len(missing), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "",
            )  # fmt: skip
    if not sidecar:
        logger.info(
            "resume: %s has no %s: restored weights, optimizer moments and the position (epoch %d, step %d, "
            "global step %d); not restored: RNG states (they follow the seed), the data set's own state (the "
            "position follows from step_num), optimizer hyper-parameters (taken from the config)",
            path.name, info_path.name, info["epoch_num"], info["step_num"], info["global_step"],
        )  # fmt: skip
    return info


def _rank_folder(folder: Path, rank: int) -> Path:
    sub = folder / f"rank_{rank}"
    return sub if sub.is_dir() else folder


def _newest_train_state(folder: Path) -> Path | None:
    """The checkpoint `meta.json` names, else the newest complete tensors file in `folder`."""
    meta = folder / "meta.json"
    if meta.is_file():
        last = json.loads(meta.read_text(encoding="utf-8")).get("last_ckpt_file")
        if last and (folder / last).is_file():
            return folder / last
    files = [
        p
        for p in folder.glob("*")
        if p.suffix in (".safetensors", ".ckpt") and not p.name.startswith(".") and p.is_file()
    ]
    if files:
        return max(files, key=lambda p: (p.stat().st_mtime, p.name))
    return None


def find_resume_checkpoint(output_dir: str | Path, resume, rank: int = 0) -> Path | None:
    """The checkpoint `resume_training` names under `output_dir`: True -> the last one (meta.json), a
    string -> that file."""
    if not resume:
        return None
    folder = checkpoint_dir(output_dir, rank)
    if isinstance(resume, str):
        for candidate in (Path(resume), folder / resume):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"resume_training {resume!r}: no such checkpoint file (also looked in {folder})")
    found = _newest_train_state(folder) if folder.is_dir() else None
    if found is None:
        logger.warning("resume_training: no checkpoint under %s; training starts from the beginning", folder)
    return found


def resume_checkpoint_from(load_checkpoint: str | Path, resume, rank: int = 0) -> Path:
    """The train state to resume from when `load_checkpoint` is given, as MindFormers reads it: a file is
    that file; a folder of `rank_N/` subfolders (or of checkpoint files) gives this rank's last checkpoint
    (its `meta.json`, else the newest file), or the file `resume_training` names when it is a name."""
    path = Path(load_checkpoint)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"load_checkpoint {str(load_checkpoint)!r}: no such file or folder to resume from")
    folder = _rank_folder(path, rank)
    if isinstance(resume, str):
        candidate = folder / resume
        if candidate.is_file():
            return candidate
        raise ConfigError(f"resume_training {resume!r}: no such checkpoint file in {folder}")
    found = _newest_train_state(folder)
    if found is None:
        raise ConfigError(
            f"load_checkpoint {str(load_checkpoint)!r}: no .ckpt or .safetensors checkpoint in {folder} "
            "to resume from (expected rank_<N>/ folders or checkpoint files)"
        )
    return found
