"""Checkpoint formats taken from a path, and the load / save / stream entry points over them.

Formats: safetensors (a file, or shards listed by `model.safetensors.index.json`), MindSpore `.ckpt`
(`ms_ckpt`), PyTorch `.bin` / `.pt` / `.pth` (weights only unless pickle is allowed), GGUF (`gguf_io`,
Hugging Face names), and a Hugging Face model folder (`config.json` with safetensors or `.bin` weights).
Readers expose the tensor specs before any data, so writers that need a header (safetensors) can
stream too.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from torchformers.checkpoint import gguf_io, ms_ckpt
from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.safetensors_io import iter_safetensors, safetensors_specs, write_safetensors

__all__ = [
    "FORMATS",
    "CheckpointReader",
    "check_tensors",
    "detect_format",
    "iter_checkpoint",
    "load_checkpoint",
    "open_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]

Specs = dict[str, tuple[torch.dtype, tuple[int, ...]]]
FORMATS = ("safetensors", "ckpt", "torch", "gguf")
_SUFFIXES = {
    ".safetensors": "safetensors",
    ".ckpt": "ckpt",
    ".bin": "torch",
    ".pt": "torch",
    ".pth": "torch",
    ".gguf": "gguf",
}
_TWICE = (
    "tensor name appears twice across the checkpoint's files (a folder of several training steps? MindFormers "
    "would merge them in directory order); pass one file, or the folder above rank_N/ to take the newest"
)
_EXPECTED = "a .safetensors, .ckpt, .bin/.pt/.pth or .gguf file, a *.index.json, or a Hugging Face model folder"


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # zip (torch.save) or a legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x0a":  # Checkpoint field 1, length-delimited
        return "ckpt"
    return None


def _folder_files(path: Path) -> tuple[str, list[Path]]:
    """The weight files of a folder (Hugging Face layout or a plain folder of shards)."""
    for index_name, fmt in (
        ("model.safetensors.index.json", "safetensors"),
        ("pytorch_model.bin.index.json", "torch"),
        ("mindspore_model.ckpt.index.json", "ckpt"),  # MindFormers' sharded `save_pretrained`
    ):
        index = path / index_name
        if index.is_file():
            return fmt, _index_files(index)
    for pattern, fmt in (("*.safetensors", "safetensors"), ("*.ckpt", "ckpt"), ("pytorch_model*.bin", "torch")):
        files = sorted(path.glob(pattern))
        if files:
            return fmt, files
    raise CheckpointError(path, "folder holds no weights (looked for *.safetensors, *.ckpt, pytorch_model*.bin)")


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(index, f"not a valid shard index ({exc!r}); expected a 'weight_map' object") from None
    files = []
    for name in dict.fromkeys(weight_map.values()):
        shard = index.parent / name
        if not shard.is_file():
            raise CheckpointError(index, f"shard {name} listed in the index is missing")
        files.append(shard)
    return files


def detect_format(path: str | Path) -> tuple[str, list[Path]]:
    """Return `(format, files)` for a checkpoint path; `format` is one of `FORMATS`."""
    path = Path(path)
    if path.is_dir():
        return _folder_files(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or folder")
    if path.name.endswith(".index.json"):
        fmt = "torch" if ".bin." in path.name else "ckpt" if ".ckpt." in path.name else "safetensors"
        return fmt, _index_files(path)
    fmt = _SUFFIXES.get(path.suffix.lower()) or _sniff(path)
    if fmt is None:
        raise CheckpointError(path, f"unknown checkpoint format (suffix {path.suffix!r}); expected {_EXPECTED}")
    return fmt, [path]


def _load_torch(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise CheckpointError(path, f"corrupted PyTorch file ({str(exc).splitlines()[0]})") from None
        if not allow_pickle:
            raise CheckpointError(
                path,
                "holds objects other than tensors, which need pickle to load (pickle can run arbitrary code); "
                "pass allow_pickle=True only for a file you trust",
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError as exc:
        if "mmap" in str(exc):  # legacy (non-zip) format: no memory map
            return _load_torch_nommap(path, allow_pickle)
        raise CheckpointError(path, f"corrupted or truncated PyTorch file ({str(exc).splitlines()[0]})") from None
    except (EOFError, ValueError, OSError) as exc:
        raise CheckpointError(path, f"corrupted or truncated PyTorch file ({exc})") from None
    return _tensors_only(path, obj)


def _load_torch_nommap(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(path, f"cannot load PyTorch file ({str(exc).splitlines()[0]})") from None
    return _tensors_only(path, obj)


def _tensors_only(path: Path, obj) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, expected a dict of tensors (a state dict)")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(path, f"entry is a {type(value).__name__}, expected a tensor", tensor=str(key))
    return dict(obj)


class CheckpointReader:
    """Tensors of one checkpoint (one or more files): specs up front, then data one tensor at a time."""

    def __init__(self, path: str | Path, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        self.format, self.files = detect_format(self.path)
        self.allow_pickle = allow_pickle
        self._torch: dict[str, torch.Tensor] | None = None

    def _torch_tensors(self) -> dict[str, torch.Tensor]:
        if self._torch is None:  # memory-mapped where possible, so holding them costs little
            self._torch = {}
            for f in self.files:
                self._torch.update(_load_torch(f, self.allow_pickle))
        return self._torch

    def specs(self) -> Specs:
        """`{name: (dtype, shape)}` in storage order, without reading tensor data (where the format allows)."""
        specs: Specs = {}
        for f in self.files:
            if self.format == "safetensors":
                part = safetensors_specs(f)
            elif self.format == "ckpt":
                part = ms_ckpt.read_ckpt_specs(f)
            elif self.format == "gguf":
                part = gguf_io.gguf_specs(f)
            else:
                part = {k: (v.dtype, tuple(v.shape)) for k, v in self._torch_tensors().items()}
            for name in part:
                if name in specs:
                    raise CheckpointError(f, _TWICE, tensor=name)
            specs.update(part)
        return specs

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.format == "torch":
            yield from self._torch_tensors().items()
            return
        for f in self.files:
            if self.format == "safetensors":
                yield from iter_safetensors(f)
            elif self.format == "ckpt":
                yield from ms_ckpt.iter_ckpt(f)
            else:
                yield from gguf_io.iter_gguf(f)


def open_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> CheckpointReader:
    """A streaming reader for the checkpoint at `path` (see `CheckpointReader`)."""
    return CheckpointReader(path, allow_pickle=allow_pickle)


def iter_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` one at a time, so that converting a checkpoint keeps memory bounded."""
    yield from CheckpointReader(path, allow_pickle=allow_pickle)


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read every tensor of the checkpoint at `path` into a flat `{name: tensor}` dict.

    Args:
        path: a file or folder; the format is taken from it (see `detect_format`).
        allow_pickle: let a PyTorch file that holds more than tensors be unpickled (trusted files only).
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint(path, allow_pickle=allow_pickle):
        if name in out:
            raise CheckpointError(path, _TWICE, tensor=name)
        out[name] = tensor
    return out


def _output_format(path: Path) -> str:
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None or fmt == "gguf":
        raise CheckpointError(path, f"cannot write suffix {path.suffix!r}; use .safetensors, .ckpt or .bin/.pt")
    return fmt


def write_checkpoint(
    path: str | Path,
    specs: Specs,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    metadata: dict[str, str] | None = None,
    crc: bool = False,
) -> None:
    """Stream `tensors` (named and ordered as `specs`) to `path`, the format given by its suffix.

    `.safetensors` and `.ckpt` are written one tensor at a time; `.bin`/`.pt` collects a dict for `torch.save`.
    """
    path = Path(path)
    fmt = _output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        write_safetensors(path, specs, tensors, metadata=metadata)
    elif fmt == "ckpt":
        ms_ckpt.save_ckpt(tensors, path, crc=crc)
    else:
        torch.save({name: t.contiguous() for name, t in tensors}, path)


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, *, metadata: dict | None = None, crc: bool = False
) -> None:
    """Write `state_dict` to `path` in the format its suffix names (.safetensors, .ckpt, .bin/.pt).

    Args:
        metadata: string key/values stored in a safetensors header (ignored by other formats).
        crc: for `.ckpt`, end the file with MindSpore's crc32 tail.
    """
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(path, f"value is a {type(value).__name__}, expected a tensor", tensor=name)
    # Tied weights share memory; each name gets its own copy on disk, as MindSpore does.
    specs = {k: (v.dtype, tuple(v.shape)) for k, v in state_dict.items()}
    write_checkpoint(path, specs, state_dict.items(), metadata=metadata, crc=crc)


def check_tensors(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[torch.dtype | None, tuple[int, ...]]] | torch.nn.Module,
    *,
    source: str | Path | None = None,
    strict: bool = True,
    check_dtype: bool = True,
) -> None:
    """Check a state dict against what a model expects; raise `CheckpointError` naming the file and tensor.

    Args:
        expected: `{name: (dtype or None, shape)}` or a module whose `state_dict()` gives the spec.
        strict: missing and unexpected names are errors.
        check_dtype: dtypes must match exactly (otherwise only shapes are checked).
    """
    if isinstance(expected, torch.nn.Module):
        expected = {k: (v.dtype, tuple(v.shape)) for k, v in expected.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    if missing and strict:
        raise CheckpointError(
            source, f"missing {len(missing)} tensor(s) the model expects: {', '.join(missing[:8])}", tensor=missing[0]
        )
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected and strict:
        raise CheckpointError(
            source,
            f"{len(unexpected)} tensor(s) the model lacks: {', '.join(unexpected[:8])}",
            tensor=unexpected[0],
        )
    for name, (dtype, shape) in expected.items():
        tensor = state_dict.get(name)
        if tensor is None:
            continue
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(source, f"shape {list(tensor.shape)}, expected {list(shape)}", tensor=name)
        if check_dtype and dtype is not None and tensor.dtype != dtype:
            raise CheckpointError(source, f"dtype {tensor.dtype}, expected {dtype}", tensor=name)
