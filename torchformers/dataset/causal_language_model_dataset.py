"""`CausalLanguageModelDataset`: MindFormers' `train_dataset` block -> a resumable PyTorch loader.

Follows `mindformers/dataset/causal_language_model_dataset.py`: the block names a data loader
(`data_loader: {type: MindDataset | ParquetDataset, dataset_dir, shuffle, num_samples}`), the columns
to read (`input_columns`, optionally renamed by `output_columns`), `batch_size`, `drop_remainder`,
`num_parallel_workers` (DataLoader worker processes), `repeat` and `seed`. Each data-parallel rank
reads its own shard (`rank_id`/`device_num`, else `torch.distributed`); `eod_reset` adds
`position_ids` restarting after each `eod_token_id`. MindSpore-only options (`python_multiprocessing`,
`numa_enable`, `prefetch_size`, auto-tune, profiling) are accepted and have no effect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from torchformers.dataset.dataloader import ResumableDataLoader
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import build_dataset_loader

__all__ = ["CausalLanguageModelDataset", "eod_position_ids"]

logger = logging.getLogger(__name__)

_MINDSPORE_ONLY = {
    "python_multiprocessing",
    "numa_enable",
    "prefetch_size",
    "auto_tune",
    "filepath_prefix",
    "autotune_per_step",
    "profile",
    "token_monitor",
    "token_monitor_config",
    "dynamic_batch",
    "pad_token_id",
    "construct_args_key",
    "divisor",
    "remainder",
    "eod_token_id_in_labels",
    "create_compressed_eod_mask",
    "compressed_eod_mask_length",
}


def _plain(value):
    """A MindFormerConfig / mapping tree as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def eod_position_ids(input_ids: torch.Tensor, eod_token_id: int) -> torch.Tensor:
    """Positions that restart at 0 after every `eod_token_id` (the EOD keeps the position before it)."""
    ids = input_ids.numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
    out = np.empty_like(ids, dtype=np.int64)
    n = ids.shape[-1]
    arange = np.arange(n)
    for row, pos in zip(ids.reshape(-1, n), out.reshape(-1, n)):
        starts = np.zeros(n, dtype=np.int64)
        starts[1:] = np.where(row[:-1] == eod_token_id, arange[1:], 0)
        pos[:] = arange - np.maximum.accumulate(starts)
    return torch.from_numpy(out)


@MindFormerRegister.register(MindFormerModuleType.DATASET)
class CausalLanguageModelDataset:
    """Build a `ResumableDataLoader` from a MindFormers dataset config (`__new__` returns the loader)."""

    def __new__(
        cls,
        dataset_config: Mapping | None = None,
        data_loader: Mapping | None = None,
        input_columns: list[str] | None = None,
        output_columns: list[str] | None = None,
        batch_size: int = 8,
        drop_remainder: bool = True,
        num_parallel_workers: int = 0,
        repeat: int = 1,
        seed: int = 0,
        eod_reset: bool = False,
        eod_token_id: int | None = None,
        rank_id: int | None = None,
        device_num: int | None = None,
        **kwargs,
    ) -> ResumableDataLoader:
        if dataset_config is not None:  # `dataset_config` wins, as MindFormers' `check_dataset_config`
            cfg = _plain(dataset_config)
            cfg.update({k: v for k, v in _plain(kwargs).items() if k not in cfg})
            return cls.__new__(cls, **cfg)
        if data_loader is None:
            raise ValueError("CausalLanguageModelDataset: the dataset config has no 'data_loader' block")
        unknown = sorted(set(kwargs) - _MINDSPORE_ONLY)
        if unknown:
            logger.warning(f"CausalLanguageModelDataset: ignoring unknown dataset config keys {unknown}")
        loader_cfg = _plain(data_loader)
        if input_columns:
            loader_cfg.setdefault("columns_list", list(input_columns))
        dataset = build_dataset_loader(loader_cfg)
        columns = list(input_columns or dataset.columns)
        if output_columns and len(output_columns) != len(columns):
            raise ValueError(
                f"CausalLanguageModelDataset: output_columns {output_columns} must rename each of input_columns "
                f"{columns} (same length)"
            )
        names = list(output_columns or columns)
        if eod_reset and eod_token_id is None:
            raise ValueError("CausalLanguageModelDataset: eod_reset needs eod_token_id")
        collate = _Collate(columns, names, eod_token_id if eod_reset else None)
        return ResumableDataLoader(
            dataset,
            int(batch_size),
            shuffle=bool(getattr(dataset, "shuffle", False)),
            seed=int(seed or 0),
            drop_last=bool(drop_remainder),
            rank=rank_id,
            world_size=device_num,
            num_workers=int(num_parallel_workers or 0),
            collate_fn=collate,
            columns=columns,
            repeat=int(repeat or 1),
        )


class _Collate:
    """Stack rows into LongTensors, rename columns, and add EOD-reset positions (picklable for workers)."""

    def __init__(self, columns: list[str], names: list[str], eod_token_id: int | None):
        self.columns, self.names, self.eod_token_id = columns, names, eod_token_id

    def __call__(self, rows):
        batch = {
            name: torch.from_numpy(np.stack([r[c] for r in rows]).astype(np.int64))
            for c, name in zip(self.columns, self.names)
        }
        if self.eod_token_id is not None and "position_ids" not in batch:
            batch["position_ids"] = eod_position_ids(batch[self.names[0]], self.eod_token_id)
        return batch
