"""Small decisions made once: dtype names, boolean words, ranks, atomic file writes.

Everything here sits at the bottom of the package (it imports nothing from torchformers) so every
layer can use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from torchformers.errors import ConfigError

__all__ = [
    "DTYPES",
    "atomic_write_bytes",
    "dtype_name",
    "get_rank",
    "get_world_size",
    "str2bool",
    "to_dtype",
]

# every spelling of a floating-point dtype the YAML, the command line or a config.json may use
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def to_dtype(value: str | torch.dtype | None, key: str = "dtype") -> torch.dtype | None:
    """"float16" / "bf16" / "mstype.float32" / "torch.bfloat16" / a `torch.dtype` -> `torch.dtype`; None stays None.

    Raises ConfigError naming `key` for anything else.
    """
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = value.strip().lower().rsplit(".", 1)[-1]  # "mstype.float16", "torch.float16"
        if name in DTYPES:
            return DTYPES[name]
    raise ConfigError(f"{key}: expected one of 'float16', 'bfloat16', 'float32', got {value!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16"."""
    return str(dtype).replace("torch.", "")


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def str2bool(text: str | bool, key: str = "value") -> bool:
    """"true"/"false" (also 1/0, yes/no; any case) -> bool; anything else raises ConfigError."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{key}: expected true or false, got {text!r}")


def get_rank() -> int:
    """This process's global rank: torch.distributed's when initialised, else torchrun's `RANK` (0 alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """The number of processes: torch.distributed's when initialised, else torchrun's `WORLD_SIZE` (1 alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, then rename it over `path`.

    A failure leaves any earlier file at `path` untouched and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; the result gets ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
