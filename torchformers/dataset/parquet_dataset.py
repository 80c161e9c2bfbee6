"""A map-style dataset over the Parquet files `llama_preprocess` writes, and the data set file resolution
that it shares with the MindRecord reader.

Registered as DATASET_LOADER `ParquetDataset`; MindFormers' `MindDataset` (`mind_dataset.py`) reads
these files too, and MindRecord files.

Rows are read one row group at a time and the last few row groups are kept (files are written with
row groups of about 4 MB), so a shuffled pass reads each row group once per sample it serves in the
worst case and sequential passes read each once. Files are opened lazily, per process, so the
dataset is safe to use from DataLoader worker processes.
"""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

import numpy as np

from torchformers.dataset.errors import DatasetFormatError
from torchformers.dataset.mindrecord import is_mindrecord, mindrecord_shards
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["DatasetFormatError", "ParquetDataset", "dataset_format", "resolve_dataset_files"]

PARQUET_MAGIC = b"PAR1"
_SKIPPED_SUFFIXES = (".json", ".db", ".md", ".txt")


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
        if head != PARQUET_MAGIC:
            return False
        f.seek(-4, os.SEEK_END)
        return f.read(4) == PARQUET_MAGIC


_MINDRECORD_NAME = re.compile(r"mindrecord\d*$")  # MindFormers' pattern for MindRecord files in a folder


def _file_format(path: Path) -> str:
    if _is_parquet(path):
        return "parquet"
    if is_mindrecord(path):
        return "mindrecord"
    if Path(f"{path}.db").exists() or ".mindrecord" in path.name:
        raise DatasetFormatError(
            f"{path} looks like a MindRecord file but has no MindRecord header (a partly written or damaged file?)"
        )
    raise DatasetFormatError(
        f"{path} is neither Parquet (no 'PAR1' magic) nor MindRecord (no MindRecord header); "
        "data_loader.dataset_dir must name llama_preprocess output (a Parquet file, its folder, or its .meta.json) "
        "or MindRecord files (a .mindrecord file or a folder of them)"
    )


def dataset_format(files: list[Path]) -> str:
    """The one format of all `files`, "parquet" or "mindrecord" (a mix is an error)."""
    formats = {f: _file_format(f) for f in files}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        example = {k: next(str(f) for f, v in formats.items() if v == k) for k in kinds}
        raise DatasetFormatError(f"data_loader.dataset_dir mixes Parquet ({example['parquet']}) and MindRecord "
                                 f"({example['mindrecord']}) files; give one format")  # fmt: skip
    return kinds[0]


def _folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(_MINDRECORD_NAME.search(p.name) for p in files):
        # as MindFormers: every file under the folder whose name ends in "mindrecord" and digits
        return sorted(Path(root) / name for root, _, names in os.walk(path) for name in names
                      if _MINDRECORD_NAME.search(name))  # fmt: skip
    return [p for p in files if not p.name.endswith(_SKIPPED_SUFFIXES)]


def resolve_dataset_files(dataset_dir: str | os.PathLike | list) -> list[Path]:
    """The data files that `dataset_dir` names: a file, a list of files, a folder, or a `.meta.json`.

    One MindRecord file stands for every shard of its data set (as in MindSpore's `MindDataset`); files in a
    list or a folder are taken as they are.
    """
    if isinstance(dataset_dir, (list, tuple)):
        files = [f for item in dataset_dir for f in _resolve_one(item, expand_shards=False)]
    else:
        files = _resolve_one(dataset_dir, expand_shards=True)
    dataset_format(files)
    return files


def _resolve_one(dataset_dir: str | os.PathLike, expand_shards: bool) -> list[Path]:
    path = Path(dataset_dir).expanduser()
    if not str(dataset_dir):
        raise DatasetFormatError("data_loader.dataset_dir is empty; set it to the preprocessed data set")
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise DatasetFormatError(f"data_loader.dataset_dir {path} holds no data file")
    elif path.is_file() and path.name.endswith(".meta.json"):
        meta = json.loads(path.read_text(encoding="utf-8"))
        files = [path.with_name(name) for name in meta.get("files", [])]
    elif path.is_file():
        files = mindrecord_shards(path) if expand_shards and is_mindrecord(path) else [path]
    elif Path(f"{path}0").is_file():  # shard names NAME0, NAME1, ... (Parquet partitions, MindRecord shards)
        files = sorted(path.parent.glob(f"{path.name}[0-9]*"), key=lambda p: int(p.name[len(path.name) :] or 0))
        files = [p for p in files if p.name[len(path.name) :].isdigit()]
    else:
        raise DatasetFormatError(f"data_loader.dataset_dir {path} does not exist")
    return files


def loader_files(dataset_dir, dataset_files, what: str) -> list[Path]:
    """The files a data loader reads: `dataset_dir`, or MindSpore's alias `dataset_files`."""
    source = dataset_dir if dataset_dir is not None else dataset_files
    if source is None:
        raise DatasetFormatError(f"data_loader needs dataset_dir (the {what} file or folder)")
    return resolve_dataset_files(source)


def loader_columns(columns_list, input_columns, available: list[str], path) -> list[str]:
    """`columns_list` (or its alias `input_columns`), all of `available` when neither is given."""
    wanted = columns_list if columns_list is not None else input_columns
    columns = list(wanted) if wanted else list(available)
    missing = [c for c in columns if c not in available]
    if missing:
        raise DatasetFormatError(f"input_columns {missing} are not in {path} (it has {available})")
    return columns


def loader_rows(num_samples, total: int) -> int:
    """`num_samples` first rows of `total` (all when None)."""
    if num_samples is not None and not 0 < int(num_samples) <= total:
        raise DatasetFormatError(f"data_loader.num_samples={num_samples} but the data set has {total} rows")
    return int(num_samples) if num_samples is not None else total


@MindFormerRegister.register(MindFormerModuleType.DATASET_LOADER)
class ParquetDataset:
    """Rows of fixed-length token columns; `dataset[i]` is `{column: np.ndarray[int32]}`.

    Args:
        dataset_dir: a Parquet file, a folder of them, a list of files, or the `.meta.json` beside them
            (`dataset_files` is accepted as an alias, as MindSpore's `MindDataset`).
        columns_list: columns to read (default: all); `input_columns` is accepted as an alias.
        shuffle: whether a loader over this dataset shuffles (read by `build_dataloader`).
        num_samples: use only the first `num_samples` rows.
        row_group_cache: how many decoded row groups each process keeps.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike | list | None = None,
        columns_list: list[str] | None = None,
        shuffle: bool = True,
        num_samples: int | None = None,
        row_group_cache: int = 8,
        dataset_files: str | list | None = None,
        input_columns: list[str] | None = None,
        **kwargs,
    ):
        import pyarrow.parquet as pq  # start-up time: `import torchformers` does not load pyarrow

        self.files = loader_files(dataset_dir, dataset_files, "preprocessed Parquet")
        if dataset_format(self.files) != "parquet":
            raise DatasetFormatError(
                f"{self.files[0]} is a MindRecord file (MindSpore's format); data_loader.type ParquetDataset reads "
                "Parquet only: use type MindDataset, which reads both"
            )
        self.shuffle = bool(shuffle)
        self.ignored_args = sorted(kwargs)  # MindSpore-only options (num_parallel_workers, ...) have no effect here
        schemas, self._groups = [], []  # _groups: (file index, row group index, first row, rows)
        total = 0
        for k, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            schemas.append(pq.read_schema(path))
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if rows:
                    self._groups.append((k, g, total, rows))
                    total += rows
        available = list(schemas[0].names)
        for path, schema in zip(self.files[1:], schemas[1:]):
            if list(schema.names) != available:
                raise DatasetFormatError(f"{path} has columns {schema.names}, {self.files[0]} has {available}")
        self.columns = loader_columns(columns_list, input_columns, available, self.files[0])
        self.metadata = json.loads((schemas[0].metadata or {}).get(b"torchformers", b"{}"))
        self.num_rows = loader_rows(num_samples, total)
        self._starts = np.array([g[2] for g in self._groups], dtype=np.int64)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = max(1, int(row_group_cache))
        self._handles: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return self.num_rows

    def _file(self, k: int):
        import pyarrow.parquet as pq  # start-up time: `import torchformers` does not load pyarrow

        if self._pid != os.getpid():  # opened handles do not survive fork into DataLoader workers
            self._handles, self._cache, self._pid = {}, collections.OrderedDict(), os.getpid()
        if k not in self._handles:
            self._handles[k] = pq.ParquetFile(self.files[k])
        return self._handles[k]

    def _row_group(self, gi: int) -> dict[str, np.ndarray]:
        if self._pid == os.getpid() and gi in self._cache:
            self._cache.move_to_end(gi)
            return self._cache[gi]
        k, g, _, rows = self._groups[gi]
        table = self._file(k).read_row_group(g, columns=self.columns)
        block = {}
        for c in self.columns:
            column = table.column(c).combine_chunks()
            block[c] = column.flatten().to_numpy().reshape(rows, -1)
        self._cache[gi] = block
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return block

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} out of range for a data set of {self.num_rows} rows")
        gi = int(np.searchsorted(self._starts, index, side="right")) - 1
        block = self._row_group(gi)
        offset = index - self._groups[gi][2]
        return {c: block[c][offset] for c in self.columns}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_cache"], state["_pid"] = {}, collections.OrderedDict(), None
        return state
