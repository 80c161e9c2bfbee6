"""MindSpore `.ckpt` files, read and written without MindSpore.

Format (mindspore `ccsrc/utils/checkpoint.proto`, proto2, and `train/serialization.py`):

    message Checkpoint { message Value { required string tag = 1;
                                         oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
                         repeated Value value = 1; }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

The file is one serialized `Checkpoint` holding a single `Value` per parameter chunk, appended one after
the other (repeated fields concatenate on the wire). A parameter over 512 MiB is split into chunks that
repeat its tag and full dims. Content is C-order little-endian bytes; type strings are MindSpore's dtype
names ("Float32", "BFloat16", ...). With `crc_check=True` MindSpore appends `b"crc_num"` and the crc32 of
all preceding bytes as a 10-byte big-endian integer.

The framing is encoded and decoded here by hand (a handful of varints) so that tensor bytes go straight
between the file and the tensor's memory, one tensor at a time. `ms_ckpt_proto` builds the same schema
with protobuf for cross-checks.
"""

from __future__ import annotations

import io
import os
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from torchformers.checkpoint.errors import CheckpointError

__all__ = [
    "CHUNK_BYTES",
    "MS_DTYPES",
    "CkptWriter",
    "iter_ckpt",
    "read_ckpt_specs",
    "save_ckpt",
]

CHUNK_BYTES = 512 * 1024 * 1024  # MindSpore's SLICE_SIZE * 1024
CRC_MARK = b"crc_num"
CRC_TAIL = len(CRC_MARK) + 10

MS_DTYPES: dict[str, torch.dtype] = {
    "Float32": torch.float32,
    "Float16": torch.float16,
    "BFloat16": torch.bfloat16,
    "Float64": torch.float64,
    "Int8": torch.int8,
    "Int16": torch.int16,
    "Int32": torch.int32,
    "Int64": torch.int64,
    "UInt8": torch.uint8,
    "UInt16": torch.uint16,
    "UInt32": torch.uint32,
    "UInt64": torch.uint64,
    "Bool": torch.bool,
}
_MS_NAMES = {v: k for k, v in MS_DTYPES.items()}
_NON_TENSOR_TYPES = ("str", "random_op")  # strings and RNG state: not parameters, skipped on read

if sys.byteorder != "little":  # content is little-endian and copied as raw memory
    raise ImportError("torchformers.checkpoint.ms_ckpt needs a little-endian host")


# ---------------------------------------------------------------------------------------------- wire helpers
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 are written as 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _chunk_header(tag: str, dims: tuple[int, ...], type_name: str, content_len: int) -> bytes:
    """Bytes of `Checkpoint{value: [Value{tag, tensor: TensorProto{dims, type, content}}]}` before the content."""
    tensor_head = b"".join(_varint(1 << 3 | 0) + _varint(d) for d in dims)  # proto2 repeated int64: unpacked
    tensor_head += _field(2, type_name.encode()) + _varint(3 << 3 | 2) + _varint(content_len)
    tensor_len = len(tensor_head) + content_len
    value_head = _field(1, tag.encode()) + _varint(2 << 3 | 2) + _varint(tensor_len)
    value_len = len(value_head) + tensor_len
    return _varint(1 << 3 | 2) + _varint(value_len) + value_head + tensor_head


# ---------------------------------------------------------------------------------------------- writing
class CkptWriter:
    """Append tensors one by one to a `.ckpt` file, as MindSpore's `save_checkpoint` does.

    Args:
        path: file to create (replaced if it exists).
        crc: end the file with MindSpore's `crc_num` tail.
        chunk_bytes: split size for large tensors (MindSpore: 512 MiB).
    """

    def __init__(self, path: str | Path, *, crc: bool = False, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = Path(path)
        self.crc = crc
        self.chunk_bytes = chunk_bytes
        self._crc = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def _write(self, data) -> None:
        self._file.write(data)
        if self.crc:
            self._crc = zlib.crc32(data, self._crc)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        type_name = _MS_NAMES.get(tensor.dtype)
        if type_name is None:
            raise CheckpointError(
                self.path, f"dtype {tensor.dtype} has no MindSpore type (known: {sorted(_MS_NAMES)})", tensor=name
            )
        tensor = tensor.detach().cpu().contiguous()
        raw = memoryview(tensor.view(-1).view(torch.uint8).numpy()) if tensor.numel() else memoryview(b"")
        dims = tuple(tensor.shape)
        start = 0
        while True:  # at least one Value, even for an empty tensor
            part = raw[start : start + self.chunk_bytes]
            self._write(_chunk_header(name, dims, type_name, len(part)))
            self._write(part)
            start += len(part)
            if start >= len(raw):
                break

    def close(self) -> None:
        if self._file.closed:
            return
        if self.crc:
            self._file.write(CRC_MARK + self._crc.to_bytes(10, "big"))
        self._file.close()

    def __enter__(self) -> CkptWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is not None:
            self.path.unlink(missing_ok=True)  # never leave a half-written checkpoint behind


def save_ckpt(tensors: Iterable[tuple[str, torch.Tensor]], path: str | Path, *, crc: bool = False) -> None:
    with CkptWriter(path, crc=crc) as writer:
        for name, tensor in tensors:
            writer.write(name, tensor)


# ---------------------------------------------------------------------------------------------- reading
class _Stream:
    """Sequential reader over the protobuf part of the file, keeping the running crc32.

    With `load=False` tensor contents are skipped by seeking (for reading names, dtypes and shapes only).
    """

    def __init__(self, path: Path, file: io.BufferedReader, end: int, load: bool) -> None:
        self.path, self.file, self.end, self.load = path, file, end, load
        self.pos = 0
        self.crc = 0
        self.tensor: str | None = None  # tensor being read, for error messages

    def fail(self, message: str) -> CheckpointError:
        return CheckpointError(self.path, f"{message} (at byte {self.pos})", tensor=self.tensor)

    def read(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise self.fail(f"file is truncated or corrupted: {n} bytes needed, {self.end - self.pos} left")
        data = self.file.read(n)
        self.pos += n
        self.crc = zlib.crc32(data, self.crc)
        return data

    def read_content(self, view: memoryview | None, n: int) -> None:
        """Read `n` content bytes into `view`, or skip them when not loading."""
        if self.pos + n > self.end:
            raise self.fail(f"file is truncated: {n} content bytes needed, {self.end - self.pos} left")
        if view is None:
            self.file.seek(n, os.SEEK_CUR)
        elif self.file.readinto(view) != n:
            raise self.fail("file is truncated")
        else:
            self.crc = zlib.crc32(view, self.crc)
        self.pos += n

    def varint(self, limit: int) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= limit:
                raise self.fail("corrupted protobuf field (varint runs past its message)")
            byte = self.read(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.fail("corrupted protobuf field (varint longer than 10 bytes)")

    def length(self, limit: int) -> int:
        n = self.varint(limit)
        if self.pos + n > limit:
            if limit >= self.end:
                raise self.fail(f"file is truncated: a field of {n} bytes, {self.end - self.pos} bytes left")
            raise self.fail(f"corrupted file: a field of {n} bytes runs past its message")
        return n

    def end_of(self, limit: int) -> int:
        """Read a length prefix and return where that field ends."""
        n = self.length(limit)
        return self.pos + n

    def skip(self, wire: int, limit: int) -> None:
        if wire == 0:
            self.varint(limit)
        elif wire in (1, 5):
            self.read(8 if wire == 1 else 4)
        elif wire == 2:
            self.read(self.length(limit))
        else:
            raise self.fail(f"corrupted protobuf data (wire type {wire})")


def _open_ckpt(path: Path) -> tuple[io.BufferedReader, int, int | None]:
    """Open the file; return it, the end of the protobuf part and the stored crc (None without a crc tail)."""
    try:
        size = os.path.getsize(path)
        file = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise CheckpointError(path, f"cannot open: {exc.strerror}") from None
    if size >= CRC_TAIL:
        file.seek(size - CRC_TAIL)
        tail = file.read(CRC_TAIL)
        file.seek(0)
        if tail[: len(CRC_MARK)] == CRC_MARK:
            return file, size - CRC_TAIL, int.from_bytes(tail[len(CRC_MARK) :], "big")
    return file, size, None


class _Tensor:
    """A parameter being assembled from one or more chunks."""

    def __init__(self, name: str, type_name: str, dims: list[int], load: bool) -> None:
        self.name = name
        self.dtype = MS_DTYPES[type_name]
        self.shape = () if dims == [0] else tuple(dims)  # MindSpore reads dims [0] of a non-string type as a scalar
        numel = 1
        for d in self.shape:
            numel *= d
        self.nbytes = numel * torch.empty((), dtype=self.dtype).element_size()
        self.buf = torch.empty(self.nbytes, dtype=torch.uint8) if load else None
        self.filled = 0

    def slot(self, n: int, s: _Stream) -> memoryview | None:
        """Where the next `n` content bytes go."""
        if self.filled + n > self.nbytes:
            raise s.fail(
                f"content of {self.filled + n} bytes is more than dims {list(self.shape)} need ({self.nbytes})"
            )
        start, self.filled = self.filled, self.filled + n
        return None if self.buf is None else memoryview(self.buf.numpy())[start : start + n]

    def result(self, s: _Stream) -> tuple[str, torch.dtype, tuple[int, ...], torch.Tensor | None]:
        if self.filled != self.nbytes:
            s.tensor = self.name
            raise s.fail(f"tensor has {self.filled} content bytes; dims {list(self.shape)} need {self.nbytes}")
        tensor = None if self.buf is None else self.buf.view(self.dtype).reshape(self.shape)
        return self.name, self.dtype, self.shape, tensor


def _iter_ckpt(path: Path, *, load: bool, verify_crc: bool):
    """Yield `(name, dtype, shape, tensor or None)` per parameter, joining consecutive chunks of one tag."""
    file, end, stored_crc = _open_ckpt(path)
    with file:
        s = _Stream(path, file, end, load)
        current: _Tensor | None = None
        while s.pos < end:
            s.tensor = None
            if s.varint(end) != (1 << 3 | 2):  # Checkpoint has one field: 1, length-delimited
                raise s.fail("not a MindSpore checkpoint, or corrupted (unexpected protobuf field)")
            value_len = s.varint(end)
            declared_end = s.pos + value_len
            value_end = min(declared_end, end)  # past the end: reported once the tag is known
            tag = type_name = None
            dims: list[int] = []
            early: bytes | None = None  # content met before the tag or type (unusual field order)
            placed = False
            while s.pos < value_end:
                key = s.varint(value_end)
                if key == (1 << 3 | 2):
                    tag = s.read(s.length(value_end)).decode("utf-8", "replace")
                    s.tensor = tag
                elif key == (3 << 3 | 2):
                    raise s.fail("MapTensor values are not supported")
                elif key != (2 << 3 | 2):
                    s.skip(key & 7, value_end)
                    continue
                else:  # TensorProto
                    t_end = s.end_of(value_end)
                    while s.pos < t_end:
                        tkey = s.varint(t_end)
                        if tkey == (1 << 3 | 0):
                            dims.append(s.varint(t_end))
                        elif tkey == (1 << 3 | 2):  # packed dims
                            d_end = s.end_of(t_end)
                            while s.pos < d_end:
                                dims.append(s.varint(d_end))
                        elif tkey == (2 << 3 | 2):
                            type_name = s.read(s.length(t_end)).decode("utf-8", "replace")
                        elif tkey == (3 << 3 | 2):
                            n = s.length(t_end)
                            if tag is not None and type_name in MS_DTYPES:
                                if current is None or current.name != tag or current.filled == current.nbytes:
                                    if current is not None:
                                        yield current.result(s)
                                    current = _Tensor(tag, type_name, dims, load)
                                s.read_content(current.slot(n, s), n)
                                placed = True
                            else:
                                early = s.read(n)
                        else:
                            s.skip(tkey & 7, t_end)
            if declared_end > end:
                raise s.fail(f"file is truncated or corrupted: a value of {value_len} bytes runs past the end")
            if tag is None or type_name is None:
                raise s.fail("corrupted checkpoint value: no tag or no tensor_type")
            if type_name in _NON_TENSOR_TYPES:
                continue
            if type_name not in MS_DTYPES:
                raise s.fail(f"unknown tensor_type {type_name!r} (known: {', '.join(MS_DTYPES)})")
            if not placed:
                if current is None or current.name != tag or current.filled == current.nbytes:
                    if current is not None:
                        yield current.result(s)
                    current = _Tensor(tag, type_name, dims, load)
                content = early or b""
                view = current.slot(len(content), s)
                if view is not None:
                    view[:] = content
            if current.filled == current.nbytes:
                yield current.result(s)
                current = None
        if current is not None:
            yield current.result(s)
    if verify_crc and stored_crc is not None and load and s.crc != stored_crc:
        raise CheckpointError(
            path, f"crc32 check failed (stored {stored_crc}, computed {s.crc}): the file is corrupted"
        )


def iter_ckpt(path: str | Path, *, verify_crc: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` for each parameter of a `.ckpt`, one at a time, chunks joined."""
    for name, _, _, tensor in _iter_ckpt(Path(path), load=True, verify_crc=verify_crc):
        yield name, tensor


def read_ckpt_specs(path: str | Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes of a `.ckpt`'s parameters, reading the headers and seeking over contents."""
    return {name: (dtype, shape) for name, dtype, shape, _ in _iter_ckpt(Path(path), load=False, verify_crc=False)}
