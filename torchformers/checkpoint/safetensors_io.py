"""safetensors files read and written one tensor at a time.

Format (huggingface/safetensors `README.md`): an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` padded with spaces
to a multiple of 8, then the tensor bytes (C-order, little-endian) at the given offsets.

Reading goes through plain `readinto` rather than a memory map so that resident memory holds one
tensor at a time; writing computes the header from the tensor specs first, then streams the bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from torchformers.checkpoint.errors import CheckpointError

__all__ = ["SAFETENSORS_DTYPES", "read_safetensors_header", "iter_safetensors", "write_safetensors"]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """Return `(entries, metadata, data_start)`; entries are checked against the file size."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, f"file is truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(path, f"not a safetensors file or truncated (header length {n}, file size {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"corrupted safetensors header ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            numel = 1
            for d in entry["shape"]:
                numel *= d
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"corrupted safetensors header entry {entry!r}", tensor=name) from None
        expected = numel * torch.empty((), dtype=dtype).element_size()
        if end - begin != expected:
            raise CheckpointError(
                path,
                f"header gives {end - begin} bytes for shape {entry['shape']} {entry['dtype']} ({expected})",
                tensor=name,
            )
        if data_start + end > size:
            raise CheckpointError(
                path, f"file is truncated: tensor ends at byte {data_start + end}, file has {size}", tensor=name
            )
    return header, metadata, data_start


def safetensors_specs(path: str | Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    header, _, _ = read_safetensors_header(path)
    return {k: (SAFETENSORS_DTYPES[e["dtype"]], tuple(e["shape"])) for k, e in header.items()}


def iter_safetensors(path: str | Path, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` in file order (or for `names`), each tensor read into its own memory."""
    path = Path(path)
    header, _, data_start = read_safetensors_header(path)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0]) if names is None else list(names)
    with open(path, "rb") as f:
        for name in order:
            entry = header[name]
            begin, end = entry["data_offsets"]
            buf = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(data_start + begin)
            if end > begin and f.readinto(memoryview(buf.numpy())) != end - begin:
                raise CheckpointError(path, "file is truncated", tensor=name)
            yield name, buf.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def write_safetensors(
    path: str | Path,
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors are given by `specs` (in that order), streaming `tensors`.

    `tensors` must yield exactly the names of `specs`, in the same order, with matching dtype and shape.
    """
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, (dtype, shape) in specs.items():
        if dtype not in _NAMES:
            raise CheckpointError(path, f"dtype {dtype} cannot be stored in safetensors", tensor=name)
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    expected = iter(specs.items())
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, tensor in tensors:
                want_name, (dtype, shape) = next(expected, (None, (None, None)))
                if name != want_name or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise CheckpointError(
                        path,
                        f"streamed tensor {tuple(tensor.shape)} {tensor.dtype} does not match the header entry "
                        f"{want_name!r} {shape} {dtype}",
                        tensor=name,
                    )
                tensor = tensor.detach().cpu().contiguous()
                if tensor.numel():
                    f.write(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
            missing = [name for name, _ in expected]
            if missing:
                raise CheckpointError(path, f"{len(missing)} tensors announced but not written: {missing[:5]}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
