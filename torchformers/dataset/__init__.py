"""Data sets: Parquet and MindRecord loaders registered for YAML (`MindDataset` reads either), and the
resumable DataLoader.

The preprocessing machinery is `torchformers.dataset.preprocess` (imported on demand: it loads pyarrow);
its programs are at MindFormers' paths, `torchformers.tools.dataset_preprocess`.
"""

from torchformers.dataset.causal_language_model_dataset import CausalLanguageModelDataset, eod_position_ids
from torchformers.dataset.dataloader import (
    ResumableBatchSampler,
    ResumableDataLoader,
    collate_columns,
    dp_rank_and_size,
)
from torchformers.dataset.mind_dataset import MindDataset, MindRecordDataset
from torchformers.dataset.mindrecord import MindRecordFile
from torchformers.dataset.parquet_dataset import DatasetFormatError, ParquetDataset, resolve_dataset_files
from torchformers.tools.register.build import build_dataset, build_dataset_loader

__all__ = [
    "CausalLanguageModelDataset",
    "DatasetFormatError",
    "MindDataset",
    "MindRecordDataset",
    "MindRecordFile",
    "ParquetDataset",
    "ResumableBatchSampler",
    "ResumableDataLoader",
    "build_dataset",
    "build_dataset_loader",
    "collate_columns",
    "dp_rank_and_size",
    "eod_position_ids",
    "resolve_dataset_files",
]
