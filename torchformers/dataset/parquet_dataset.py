"""A map-style dataset over the Parquet files `llama_preprocess` writes (our MindRecord replacement).

Registered as DATASET_LOADER `ParquetDataset`, and as `MindDataset` so MindFormers YAML
(`data_loader: {type: MindDataset, dataset_dir: ..., shuffle: True}`) works unchanged once
`dataset_dir` points at our output. A real MindRecord file gets an error saying how to regenerate it.

Rows are read one row group at a time and the last few row groups are kept (files are written with
row groups of about 4 MB), so a shuffled pass reads each row group once per sample it serves in the
worst case and sequential passes read each once. Files are opened lazily, per process, so the
dataset is safe to use from DataLoader worker processes.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np

from torchformers.errors import DataError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["DatasetFormatError", "ParquetDataset", "resolve_dataset_files"]

PARQUET_MAGIC = b"PAR1"
_SKIPPED_SUFFIXES = (".json", ".db", ".md", ".txt")


class DatasetFormatError(DataError):
    """The data set files are missing or not in the expected format."""


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
        if head != PARQUET_MAGIC:
            return False
        f.seek(-4, os.SEEK_END)
        return f.read(4) == PARQUET_MAGIC


def _check_parquet(path: Path) -> None:
    if _is_parquet(path):
        return
    if Path(f"{path}.db").exists() or ".mindrecord" in path.name:
        raise DatasetFormatError(
            f"{path} is a MindRecord file (MindSpore's own format), which torchformers does not read. "
            "Regenerate the data set as Parquet with `python -m "
            "torchformers.tools.dataset_preprocess.llama.llama_preprocess ... --output_file NAME` "
            "and point data_loader.dataset_dir at that output"
        )
    raise DatasetFormatError(
        f"{path} is not a Parquet file (no 'PAR1' magic; a partly written or foreign file?). "
        "data_loader.dataset_dir must name llama_preprocess output: a Parquet file, its folder, or its .meta.json"
    )


def resolve_dataset_files(dataset_dir: str | os.PathLike | list) -> list[Path]:
    """The Parquet files that `dataset_dir` names: a file, a list of files, a folder, or a `.meta.json`."""
    if isinstance(dataset_dir, (list, tuple)):
        files = [f for item in dataset_dir for f in resolve_dataset_files(item)]
    else:
        path = Path(dataset_dir).expanduser()
        if not str(dataset_dir):
            raise DatasetFormatError("data_loader.dataset_dir is empty; set it to the preprocessed data set")
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_SKIPPED_SUFFIXES)
            )
            if not files:
                raise DatasetFormatError(f"data_loader.dataset_dir {path} holds no data file")
        elif path.is_file() and path.name.endswith(".meta.json"):
            meta = json.loads(path.read_text(encoding="utf-8"))
            files = [path.with_name(name) for name in meta.get("files", [])]
        elif path.is_file():
            files = [path]
        elif Path(f"{path}0").is_file():  # MindRecord-style shard names: NAME0, NAME1, ...
            files = sorted(path.parent.glob(f"{path.name}[0-9]*"), key=lambda p: int(p.name[len(path.name) :] or 0))
            files = [p for p in files if p.name[len(path.name) :].isdigit()]
        else:
            raise DatasetFormatError(f"data_loader.dataset_dir {path} does not exist")
    for f in files:
        _check_parquet(f)
    return files


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

        source = dataset_dir if dataset_dir is not None else dataset_files
        if source is None:
            raise DatasetFormatError("data_loader needs dataset_dir (the preprocessed Parquet file or folder)")
        self.files = resolve_dataset_files(source)
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
        wanted = columns_list if columns_list is not None else input_columns
        self.columns = list(wanted) if wanted else available
        missing = [c for c in self.columns if c not in available]
        if missing:
            raise DatasetFormatError(f"input_columns {missing} are not in {self.files[0]} (it has {available})")
        self.metadata = json.loads((schemas[0].metadata or {}).get(b"torchformers", b"{}"))
        if num_samples is not None and not 0 < int(num_samples) <= total:
            raise DatasetFormatError(f"data_loader.num_samples={num_samples} but the data set has {total} rows")
        self.num_rows = int(num_samples) if num_samples is not None else total
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


MindFormerRegister.register_cls(ParquetDataset, MindFormerModuleType.DATASET_LOADER, alias="MindDataset")
