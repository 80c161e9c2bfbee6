"""MindFormers' `data_loader: {type: MindDataset}`: MindRecord files, or the Parquet files `llama_preprocess` writes.

`MindDataset` looks at the files `dataset_dir` (or `dataset_files`) names and builds the map-style
dataset for their format: `MindRecordDataset` (below, over `mindrecord.MindRecordFile`) or
`ParquetDataset`. Either one feeds the same `ResumableDataLoader` (shuffle, data-parallel shards,
resume), so MindRecord data is one more source format, not a second pipeline.

As MindSpore's `MindDataset`: one file of a multi-shard data set (`X.mindrecord0`, written with
`FileWriter(shard_num=N)`) stands for all its shards; a list of files is read as given; a folder is
every `*.mindrecord[N]` file under it (MindFormers' rule). Rows are returned in file order, then row
order; `shuffle` only says whether the loader built over the dataset shuffles.
"""

from __future__ import annotations

import os

import numpy as np

from torchformers.dataset.mindrecord import MindRecordFile
from torchformers.dataset.parquet_dataset import (
    DatasetFormatError,
    ParquetDataset,
    dataset_format,
    loader_columns,
    loader_files,
    loader_rows,
)
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["MindDataset", "MindRecordDataset"]


@MindFormerRegister.register(MindFormerModuleType.DATASET_LOADER)
class MindRecordDataset:
    """Rows of MindRecord files; `dataset[i]` is `{column: np.ndarray}` (int32 token arrays for MindFormers' data).

    Args:
        dataset_dir: a MindRecord file (standing for all shards of its data set), a list of files, or a folder
            (`dataset_files` is accepted as an alias, as MindSpore's `MindDataset`).
        columns_list: columns to read (default: all, in schema order); `input_columns` is accepted as an alias.
        shuffle: whether a loader over this dataset shuffles (read by `build_dataloader`).
        num_samples: use only the first `num_samples` rows.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike | list | None = None,
        columns_list: list[str] | None = None,
        shuffle: bool = True,
        num_samples: int | None = None,
        dataset_files: str | list | None = None,
        input_columns: list[str] | None = None,
        **kwargs,
    ):
        self.files = loader_files(dataset_dir, dataset_files, "MindRecord")
        self.shards = [MindRecordFile(f) for f in self.files]
        self.shuffle = bool(shuffle)
        self.ignored_args = sorted(kwargs)  # MindSpore-only options (num_parallel_workers, ...) have no effect here
        first = self.shards[0]
        for shard in self.shards[1:]:
            if shard.fields != first.fields:
                raise DatasetFormatError(
                    f"{shard.path} has the schema {shard.fields}, {first.path} has {first.fields}; "
                    "the files of one data set share one schema"
                )
        self.columns = loader_columns(columns_list, input_columns, first.columns, first.path)
        self.metadata = {"format": "mindrecord", "schema": first.schema_name, "fields": first.fields}
        for shard in self.shards:
            shard.index()
        self._starts = np.cumsum([0] + [s.num_rows for s in self.shards])
        total = int(self._starts[-1])
        if total == 0:
            raise DatasetFormatError(f"the MindRecord data set {', '.join(map(str, self.files))} holds no row")
        self.num_rows = loader_rows(num_samples, total)

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} out of range for a data set of {self.num_rows} rows")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.shards[k].row(index - int(self._starts[k]), self.columns)


@MindFormerRegister.register(MindFormerModuleType.DATASET_LOADER)
class MindDataset:
    """MindFormers' data loader name: builds a `MindRecordDataset` or a `ParquetDataset` by the files' format."""

    def __new__(cls, dataset_dir=None, dataset_files=None, **kwargs):
        kind = dataset_format(loader_files(dataset_dir, dataset_files, "MindRecord or Parquet"))
        source = dataset_dir if dataset_dir is not None else dataset_files
        return (MindRecordDataset if kind == "mindrecord" else ParquetDataset)(dataset_dir=source, **kwargs)
