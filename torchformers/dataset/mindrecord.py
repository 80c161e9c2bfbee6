"""MindRecord files, as MindSpore's `mindspore.mindrecord.FileWriter` writes them, read without MindSpore.

The layout, from MindSpore's `mindspore/ccsrc/minddata/mindrecord/` (`io/shard_writer.cc`,
`meta/shard_header.cc`, `meta/shard_page.cc`, `meta/shard_column.cc`):

- A shard file is a header region of `header_size` bytes, then pages of `page_size` bytes; page `k`
  starts at `header_size + k * page_size` (the unused end of a page is a hole: files are sparse).
- The header region is a little-endian uint64 `n` and `n` bytes of JSON: `header_size`, `page_size`,
  `schema` (one entry: `desc`, `blob_fields`, `schema` = `{field: {type, shape?}}`), `page` (this
  shard's pages: `page_id`, `page_type` `BLOB_DATA` or `RAW_DATA`, `start_row_id`, `end_row_id`,
  `page_size` = bytes used, `row_group_ids`), `shard_addresses` (the file names of every shard of
  the data set, in shard order), `shard_id`, `index_fields`, `statistics`, `version`.
- A blob page is its rows one after another: a little-endian uint64 length, then the row's blob.
  With one blob field the blob is that field; with several, each field in `blob_fields` order is a
  big-endian uint64 length and its bytes.
- When the schema has an int32 or int64 array, integer array fields are compressed: a big-endian
  uint32 count `n`, `ceil(n / 4)` bytes of 2-bit width codes (first element in the high bits;
  0..3 = 1, 2, 4, 8 bytes), then each value little-endian, sign-extended from its width.
- A raw page holds the fields that are not blobs (scalars, strings), a row at a time: a
  little-endian uint64 length and the row's fields as a MessagePack map. Rows are in the same order
  in blob and raw pages.

The `.db` file beside each shard (MindSpore's SQLite index) is not needed: row positions are found
by walking the length prefixes of the pages, through a memory map (only the prefixes are touched).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from torchformers.dataset.errors import DatasetFormatError

__all__ = ["MindRecordError", "MindRecordFile", "decode_msgpack", "is_mindrecord", "mindrecord_shards", "read_header"]

_MAX_HEADER_BYTES = 128 << 20  # MindSpore's kMaxHeaderSize
_BLOB, _RAW = "BLOB_DATA", "RAW_DATA"
_DTYPES = {"int32": np.int32, "int64": np.int64, "float32": np.float32, "float64": np.float64, "bytes": np.uint8}
_WIDTH_DTYPES = (np.dtype("<i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<i8"))


class MindRecordError(DatasetFormatError):
    """A file that should be MindRecord is not, or is damaged."""


def read_header(path: str | os.PathLike) -> dict | None:
    """The JSON header of a MindRecord shard file, or None when `path` is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= _MAX_HEADER_BYTES:
                return None
            text = f.read(n)
    except OSError:
        return None
    if len(text) != n or text[:1] != b"{":
        return None
    try:
        header = json.loads(text)
    except ValueError:
        return None
    if not isinstance(header, dict) or not {"header_size", "page_size", "schema", "page"} <= header.keys():
        return None
    return header


def is_mindrecord(path: str | os.PathLike) -> bool:
    return read_header(path) is not None


def mindrecord_shards(path: str | os.PathLike) -> list[Path]:
    """Every shard of the data set that `path` is one shard of, in shard order (as MindSpore's `MindDataset`
    finds them from one file name): the names in the header's `shard_addresses`, in `path`'s folder."""
    path = Path(path)
    header = read_header(path)
    if header is None:
        raise MindRecordError(f"{path} is not a MindRecord file (no MindRecord header)")
    names = header.get("shard_addresses") or [path.name]
    shards = [path.with_name(name) for name in names]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise MindRecordError(
            f"{path} is shard {header.get('shard_id', '?')} of {len(shards)} MindRecord files; missing: "
            f"{', '.join(missing)} (MindSpore finds the other shards by the names its header records; a renamed "
            "shard is not found either)"
        )
    return shards


class MindRecordFile:
    """One MindRecord shard file: `columns`, `num_rows`, and `row(i)` -> `{column: np.ndarray}`.

    Array fields come back with the schema's dtype and shape (`[-1]` -> 1-D); `bytes` as uint8 arrays;
    scalar fields as numpy scalars (0-d arrays); strings as `str`. The file is memory-mapped on first use
    in each process (safe across `fork` into DataLoader workers).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header = read_header(self.path)
        if header is None:
            raise MindRecordError(f"{self.path} is not a MindRecord file (no MindRecord header)")
        schemas = header["schema"]
        if len(schemas) != 1:
            raise MindRecordError(f"{self.path}: {len(schemas)} schemas in the header; MindRecord files have one")
        self.header = header
        self.schema_name = schemas[0].get("desc", "")
        self.fields: dict[str, dict] = schemas[0]["schema"]
        self.blob_fields: list[str] = list(schemas[0].get("blob_fields", []))
        for name, spec in self.fields.items():
            if spec.get("type") not in (*_DTYPES, "string"):
                raise MindRecordError(
                    f"{self.path}: field {name!r} has the type {spec.get('type')!r}, which MindRecord does not have"
                )
        self.columns = list(self.fields)
        self.compressed = any(
            spec["type"] in ("int32", "int64") and "shape" in spec for spec in self.fields.values()
        )  # MindSpore's ShardColumn: integer arrays are compressed when the schema has one
        self.header_size, self.page_size = int(header["header_size"]), int(header["page_size"])
        pages = sorted(header["page"], key=lambda p: p["page_id"])
        self._blob_pages = [p for p in pages if p["page_type"] == _BLOB]
        self._raw_pages = [p for p in pages if p["page_type"] == _RAW]
        self.num_rows = sum(int(p["end_row_id"]) - int(p["start_row_id"]) for p in self._blob_pages)
        self._blob_index: np.ndarray | None = None  # (num_rows, 2): offset, length
        self._raw_index: np.ndarray | None = None
        self._map, self._pid = None, None

    # ---------------------------------------------------------------------------------------------
    def _buffer(self) -> mmap.mmap:
        if self._pid != os.getpid():
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._pid = os.getpid()
        return self._map

    def _walk(self, pages: list[dict]) -> np.ndarray:
        """(offset, length) of every record in `pages`, by their length prefixes."""
        buf, out = self._buffer(), []
        size = len(buf)
        for page in pages:
            pos = self.header_size + int(page["page_id"]) * self.page_size
            end = pos + int(page["page_size"])
            if end > size:
                raise MindRecordError(f"{self.path} is truncated: page {page['page_id']} ends past the end of the file")
            while pos < end:
                (n,) = struct.unpack_from("<Q", buf, pos)
                if pos + 8 + n > end:
                    raise MindRecordError(f"{self.path}: a record of page {page['page_id']} runs past the page")
                out.append((pos + 8, n))
                pos += 8 + n
        return np.array(out, dtype=np.int64).reshape(-1, 2)

    def _blob_positions(self) -> np.ndarray:
        if self._blob_index is None:
            index = self._walk(self._blob_pages)
            if len(index) != self.num_rows:
                raise MindRecordError(f"{self.path}: {len(index)} blob records, the header says {self.num_rows} rows")
            self._blob_index = index
        return self._blob_index

    def _raw_positions(self) -> np.ndarray:
        if self._raw_index is None:
            index = self._walk(self._raw_pages)
            if len(index) != self.num_rows:
                raise MindRecordError(f"{self.path}: {len(index)} raw records, the header says {self.num_rows} rows")
            self._raw_index = index
        return self._raw_index

    def index(self) -> None:
        """Find every row's position now (otherwise done on the first read)."""
        self._blob_positions()

    # ---------------------------------------------------------------------------------------------
    def row(self, i: int, columns: list[str] | None = None) -> dict:
        columns = self.columns if columns is None else columns
        out = {}
        blob_wanted = [c for c in columns if c in self.blob_fields]
        if blob_wanted:
            offset, length = self._blob_positions()[i]
            blob = self._buffer()[offset : offset + length]
            parts = self._split_blob(blob)
            for c in blob_wanted:
                out[c] = self._decode_field(c, parts[c])
        raw_wanted = [c for c in columns if c not in self.blob_fields]
        if raw_wanted:
            offset, length = self._raw_positions()[i]
            record = decode_msgpack(self._buffer()[offset : offset + length])
            for c in raw_wanted:
                out[c] = self._raw_value(c, record[c])
        return {c: out[c] for c in columns}

    def _split_blob(self, blob: bytes) -> dict[str, bytes]:
        if len(self.blob_fields) == 1:
            return {self.blob_fields[0]: blob}
        parts, pos = {}, 0
        for name in self.blob_fields:
            (n,) = struct.unpack_from(">Q", blob, pos)
            parts[name] = blob[pos + 8 : pos + 8 + n]
            pos += 8 + n
        return parts

    def _decode_field(self, name: str, data: bytes) -> np.ndarray:
        spec = self.fields[name]
        kind = spec["type"]
        if kind == "string":
            return np.array(data.decode("utf-8"))
        dtype = _DTYPES[kind]
        if self.compressed and kind in ("int32", "int64"):
            values = decompress_ints(data).astype(dtype)
        else:
            values = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        shape = spec.get("shape")
        if shape and len(shape) > 1:
            values = values.reshape(shape)
        return values

    def _raw_value(self, name: str, value):
        kind = self.fields[name]["type"]
        if kind == "string":
            return value
        if kind == "bytes":
            return np.frombuffer(value, dtype=np.uint8)
        return np.array(value, dtype=_DTYPES[kind])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_map"], state["_pid"] = None, None
        return state


def decompress_ints(data: bytes) -> np.ndarray:
    """MindSpore's integer-array compression (`ShardColumn::CompressInt`) undone, as int64."""
    (n,) = struct.unpack_from(">I", data, 0)
    codes_end = 4 + (n + 3) // 4
    packed = np.frombuffer(data, dtype=np.uint8, count=codes_end - 4, offset=4)
    codes = np.stack([(packed >> s) & 3 for s in (6, 4, 2, 0)], axis=1).reshape(-1)[:n]
    widths = 1 << codes.astype(np.int64)
    starts = codes_end + np.concatenate([[0], np.cumsum(widths)[:-1]]) if n else np.zeros(0, dtype=np.int64)
    if n and starts[-1] + widths[-1] != len(data):
        raise MindRecordError(
            f"a compressed integer array of {n} values has {len(data)} bytes, not {starts[-1] + widths[-1]}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(n, dtype=np.int64)
    for code, dtype in enumerate(_WIDTH_DTYPES):
        where = np.flatnonzero(codes == code)
        if len(where):
            gathered = raw[starts[where, None] + np.arange(dtype.itemsize)]
            out[where] = gathered.copy().view(dtype).reshape(-1)
    return out


def decode_msgpack(data: bytes):
    """A MessagePack value (the subset nlohmann::json::to_msgpack writes: nil, bool, int, float, str, bin,
    array, map)."""
    value, end = _unpack(memoryview(data), 0)
    if end != len(data):
        raise MindRecordError(f"{len(data) - end} bytes left after a MessagePack record")
    return value


def _unpack(b: memoryview, pos: int):
    t = b[pos]
    pos += 1
    if t <= 0x7F:
        return t, pos
    if t >= 0xE0:
        return t - 0x100, pos
    if 0x80 <= t <= 0x8F:
        return _unpack_map(b, pos, t & 0x0F)
    if 0x90 <= t <= 0x9F:
        return _unpack_array(b, pos, t & 0x0F)
    if 0xA0 <= t <= 0xBF:
        n = t & 0x1F
        return bytes(b[pos : pos + n]).decode("utf-8"), pos + n
    if t == 0xC0:
        return None, pos
    if t in (0xC2, 0xC3):
        return t == 0xC3, pos
    fixed = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
             0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}  # fmt: skip
    if t in fixed:
        (v,) = struct.unpack_from(fixed[t], b, pos)
        return v, pos + struct.calcsize(fixed[t])
    sized = {0xC4: (">B", "bin"), 0xC5: (">H", "bin"), 0xC6: (">I", "bin"), 0xD9: (">B", "str"),
             0xDA: (">H", "str"), 0xDB: (">I", "str"), 0xDC: (">H", "array"), 0xDD: (">I", "array"),
             0xDE: (">H", "map"), 0xDF: (">I", "map")}  # fmt: skip
    if t in sized:
        fmt, kind = sized[t]
        (n,) = struct.unpack_from(fmt, b, pos)
        pos += struct.calcsize(fmt)
        if kind == "bin":
            return bytes(b[pos : pos + n]), pos + n
        if kind == "str":
            return bytes(b[pos : pos + n]).decode("utf-8"), pos + n
        return (_unpack_array if kind == "array" else _unpack_map)(b, pos, n)
    raise MindRecordError(f"MessagePack type byte {t:#x} is not one MindRecord writes")


def _unpack_array(b: memoryview, pos: int, n: int):
    items = []
    for _ in range(n):
        item, pos = _unpack(b, pos)
        items.append(item)
    return items, pos


def _unpack_map(b: memoryview, pos: int, n: int):
    items = {}
    for _ in range(n):
        key, pos = _unpack(b, pos)
        items[key], pos = _unpack(b, pos)
    return items, pos
