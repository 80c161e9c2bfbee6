"""A resumable, data-parallel-aware PyTorch DataLoader over a map-style dataset.

Each epoch's order is a permutation seeded by `seed + epoch` (the same on every rank); rank `r` of
`w` takes every `w`-th sample of it (`torch.utils.data.DistributedSampler`'s split), then batches.
`state_dict()` records how many batches this loader has handed out in the current epoch, as a global
sample count, so `load_state_dict()` on a fresh loader continues with exactly the batches not yet
seen, also with a different number of ranks when the consumed count divides evenly. Batches are
`{column: LongTensor[batch, seq_length + 1]}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from torchformers.utils import get_rank, get_world_size

__all__ = ["ResumableBatchSampler", "ResumableDataLoader", "collate_columns", "dp_rank_and_size"]


def dp_rank_and_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values first, then `torch.distributed` when initialised, else (0, 1).

    Without a process group the environment's `RANK`/`WORLD_SIZE` are not used: a loader built before
    `init_process_group` (or outside a launch) reads the whole data set.
    """
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = get_rank() if rank is None else rank
            world_size = get_world_size() if world_size is None else world_size
        else:
            rank, world_size = rank or 0, world_size or 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"data-parallel rank {rank} is not in [0, {world_size})")
    return int(rank), int(world_size)


class ResumableBatchSampler(Sampler[list[int]]):
    """This rank's batches of one epoch, starting at batch `start_batch`."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        repeat: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.repeat = rank, world_size, drop_last, max(1, int(repeat))
        self.epoch, self.start_batch = 0, 0

    def rank_indices(self, epoch: int) -> np.ndarray:
        parts = []
        for r in range(self.repeat):
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch * self.repeat + r)
                parts.append(torch.randperm(self.num_samples, generator=g).numpy())
            else:
                parts.append(np.arange(self.num_samples))
        order = np.concatenate(parts)
        if self.drop_last:
            per_rank = len(order) // self.world_size
        else:  # pad by wrapping around so every rank gets the same number of samples
            per_rank = math.ceil(len(order) / self.world_size)
            order = np.resize(order, per_rank * self.world_size)
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def batches_per_epoch(self) -> int:
        per_rank = (
            (self.num_samples * self.repeat) // self.world_size
            if self.drop_last
            else math.ceil(self.num_samples * self.repeat / self.world_size)
        )
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.rank_indices(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def collate_columns(names: list[str], rename: dict[str, str] | None = None) -> Callable:
    """Stack `{column: int32 array}` rows into `{name: LongTensor[batch, length]}`."""
    rename = rename or {}

    def collate(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        return {rename.get(c, c): torch.from_numpy(np.stack([r[c] for r in rows]).astype(np.int64)) for c in names}

    return collate


class ResumableDataLoader:
    """Iterates epochs of batches; `state_dict()`/`load_state_dict()` save and restore the position.

    Iterating once runs the rest of the current epoch, then the next `iter()` starts the next epoch
    (call `set_epoch` to choose one). `len()` is the number of batches of a full epoch on this rank.
    """

    STATE_VERSION = 1

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        columns: list[str] | None = None,
        repeat: int = 1,
        prefetch_factor: int | None = None,
        pin_memory: bool = False,
    ):
        rank, world_size = dp_rank_and_size(rank, world_size)
        self.dataset = dataset
        self.columns = list(columns or getattr(dataset, "columns", []))
        self.sampler = ResumableBatchSampler(
            len(dataset),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            repeat=repeat,
        )
        self.collate_fn = collate_fn or collate_columns(self.columns)
        self.num_workers = int(num_workers)
        self._loader_kwargs = {"pin_memory": pin_memory}
        if self.num_workers > 0:
            self._loader_kwargs |= {"persistent_workers": False, "prefetch_factor": prefetch_factor or 2}
        self.epoch, self.batches_done = 0, 0

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches_done = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batches_done >= len(self):  # the previous epoch was finished: start the next one
            self.epoch, self.batches_done = self.epoch + 1, 0
        self.sampler.epoch, self.sampler.start_batch = self.epoch, self.batches_done
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            **self._loader_kwargs,
        )
        for batch in loader:
            self.batches_done += 1  # counted when handed out: a checkpoint taken now has trained on it
            yield batch

    def state_dict(self) -> dict:
        s = self.sampler
        return {
            "version": self.STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "samples_done": self.batches_done * s.batch_size * s.world_size,  # global, across ranks
            "num_samples": s.num_samples,
            "batch_size": s.batch_size,
            "world_size": s.world_size,
            "seed": s.seed,
            "shuffle": s.shuffle,
            "repeat": s.repeat,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` stopped; errors say which setting differs when that is impossible."""
        s = self.sampler
        for key, mine in (
            ("num_samples", s.num_samples),
            ("seed", s.seed),
            ("shuffle", s.shuffle),
            ("repeat", s.repeat),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"data loader state: {key} was {state[key]!r} when saved, is {mine!r} now; "
                    "the saved position does not apply to this data set order"
                )
        per_step = s.batch_size * s.world_size
        samples = int(state["samples_done"])
        if samples % per_step:
            raise ValueError(
                f"data loader state: {samples} samples were consumed with batch_size {state.get('batch_size')} on "
                f"{state.get('world_size')} ranks, which is not a whole number of steps of batch_size "
                f"{s.batch_size} on {s.world_size} ranks"
            )
        # The global order is the same for any world size and each step consumes the next
        # batch_size * world_size samples of it, so the position carries over between layouts.
        self.epoch, self.batches_done = int(state["epoch"]), samples // per_step
