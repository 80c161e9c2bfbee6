"""Tokenized samples -> Parquet files: fixed-size int32 list columns written atomically.

The Parquet output replaces MindFormers' MindRecord (`FileWriter` in `llama_preprocess.py`): one
file, or `<output_file>0`, `<output_file>1`, ... for `--file_partition`, plus `<output_file>.meta.json`.
Files are written under temporary names and moved into place only when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["PARQUET_OPTIONS", "ParquetSink", "meta_path", "output_files", "parquet_writer"]


def output_files(output_file: str | os.PathLike, file_partition: int) -> list[Path]:
    """Output names: the file itself, or `<output_file>0`, `<output_file>1`, ... (MindRecord's shard names)."""
    output_file = Path(output_file)
    if file_partition == 1:
        return [output_file]
    return [output_file.with_name(f"{output_file.name}{i}") for i in range(file_partition)]


def meta_path(output_file: str | os.PathLike) -> Path:
    """`<output_file>.meta.json`: the tokenizer, `seq_length`, the files and every count."""
    return Path(f"{output_file}.meta.json")


# Cheap to write (the writing process is serial): no dictionary pages nor statistics (token lists gain
# little from either), zstd level 1 (about the size snappy + dictionary gives, in half the time).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": False,
    "write_statistics": False,
}


def parquet_writer(path: str | os.PathLike, schema: pa.Schema) -> pq.ParquetWriter:
    """A `pyarrow.parquet.ParquetWriter` with the options every tokenized output uses."""
    return pq.ParquetWriter(path, schema, **PARQUET_OPTIONS)


class ParquetSink:
    """Writes fixed-length int32 rows round-robin into `file_partition` Parquet files, atomically.

    Rows arrive unpadded and are copied into one preallocated, pre-padded block per file and column;
    a full block is written as one row group and refilled with padding.
    """

    def __init__(
        self,
        files: list[Path],
        columns: list[str],
        length: int,
        schema_meta: dict,
        rows_per_group: int,
        pad_values: dict[str, int],
    ):
        self.files = files
        self.columns = columns
        self.length = length
        self.rows_per_group = rows_per_group
        self.pad_values = pad_values
        self.tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in files]
        fields = [pa.field(c, pa.list_(pa.int32(), length)) for c in columns]
        self.schema = pa.schema(fields, metadata={"torchformers": json.dumps(schema_meta)})
        self.writers: list = [None] * len(files)
        self.blocks: list[dict[str, np.ndarray] | None] = [None] * len(files)
        self.filled = [0] * len(files)
        self.rows = 0

    def add(self, columns: dict[str, np.ndarray], lengths: np.ndarray) -> None:
        """Append `len(lengths)` rows: row i of column c is the next `lengths[i]` values of `columns[c]`."""
        parts = len(self.files)
        start = 0
        for n in lengths.tolist():
            k = self.rows % parts
            block = self.blocks[k]
            if block is None:
                block = self.blocks[k] = {
                    c: np.full((self.rows_per_group, self.length), self.pad_values[c], np.int32) for c in self.columns
                }
            r = self.filled[k]
            for c, values in columns.items():
                block[c][r, :n] = values[start : start + n]
            start += n
            self.filled[k] = r + 1
            self.rows += 1
            if r + 1 == self.rows_per_group:
                self._flush(k)

    def _flush(self, k: int) -> None:
        n = self.filled[k]
        if not n:
            return
        block = self.blocks[k]
        arrays = [pa.FixedSizeListArray.from_arrays(pa.array(block[c][:n].ravel()), self.length) for c in self.columns]
        if self.writers[k] is None:
            self.writers[k] = parquet_writer(self.tmp[k], self.schema)
        self.writers[k].write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        for c in self.columns:  # written (and copied) by now: the block is reused for the next row group
            block[c][:n] = self.pad_values[c]
        self.filled[k] = 0

    def commit(self, meta: dict, meta_file: Path) -> None:
        """Close every file, write `meta` to `meta_file`, then move everything into place."""
        for k in range(len(self.files)):
            self._flush(k)
            if self.writers[k] is None:  # an empty partition is still a valid file with the schema
                self.writers[k] = parquet_writer(self.tmp[k], self.schema)
            self.writers[k].close()
        meta_tmp = meta_file.with_name(f".{meta_file.name}.tmp-{os.getpid()}")
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for tmp, final in zip(self.tmp, self.files):
            os.replace(tmp, final)
        os.replace(meta_tmp, meta_file)

    def abort(self) -> None:
        """Close what is open and remove the temporary files: nothing of a failed run is left."""
        for k, writer in enumerate(self.writers):
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # already failing: the temporary file is removed below anyway
                    pass
            self.tmp[k].unlink(missing_ok=True)
