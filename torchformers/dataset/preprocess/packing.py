"""Packing several conversations into one sample (`--pack`), with `position_ids` and `segment_ids`.

MindFormers' `llama_preprocess.py` writes one conversation per sample; packing is this tool's option.
"""

from __future__ import annotations

import numpy as np

from torchformers.dataset.preprocess.parquet_writer import ParquetSink

__all__ = ["Packer"]


class Packer:
    """Puts conversations into samples greedily, in input order, with `position_ids` restarting and
    `segment_ids` 1, 2, ... per conversation."""

    def __init__(self, length: int, sink: ParquetSink):
        self.length, self.sink = length, sink
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        self.used = 0

    def add(self, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> None:
        """Conversations given end to end, as the qa task returns them."""
        start = 0
        for n in lengths.tolist():
            if self.used + n > self.length:
                self.flush()
            self.items.append((ids[start : start + n], labels[start : start + n]))
            self.used += n
            start += n

    def flush(self) -> None:
        if not self.items:
            return
        columns = {
            "input_ids": np.concatenate([a for a, _ in self.items]),
            "labels": np.concatenate([b for _, b in self.items]),
            "position_ids": np.concatenate([np.arange(len(a), dtype=np.int32) for a, _ in self.items]),
            "segment_ids": np.concatenate([np.full(len(a), k + 1, np.int32) for k, (a, _) in enumerate(self.items)]),
        }
        self.sink.add(columns, np.array([self.used]))
        self.items, self.used = [], 0
