"""The Parquet loader: YAML blocks, MindDataset over Parquet, DP shards, seeded shuffle and exact resume."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from torchformers.dataset import (
    DatasetFormatError,
    ParquetDataset,
    ResumableDataLoader,
    build_dataset,
    eod_position_ids,
)

LENGTH = 9


@pytest.fixture()
def data_file(tmp_path):
    """Row i holds the value i in every position (input_ids) and -i (labels), in row groups of 7."""
    n = 50
    ids = np.repeat(np.arange(n, dtype=np.int32), LENGTH)
    arrays = [pa.FixedSizeListArray.from_arrays(pa.array(v), LENGTH) for v in (ids, -ids)]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, names=["input_ids", "labels"]), path, row_group_size=7)
    return path


def config(path, **extra):
    dataset_config = {
        "data_loader": {"type": "MindDataset", "dataset_dir": str(path), "shuffle": True},
        "input_columns": ["input_ids", "labels"],
        "batch_size": 4,
        "drop_remainder": True,
        "num_parallel_workers": 0,
        "python_multiprocessing": False,
        "numa_enable": False,
        "prefetch_size": 1,
        "repeat": 1,
        "seed": 1234,
    }
    dataset_config.update(extra)
    return {"type": "CausalLanguageModelDataset", "dataset_config": dataset_config}


def rows_of(batches):
    return [b["input_ids"][:, 0].tolist() for b in batches]


def test_yaml_block_gives_batches_of_the_selected_columns(data_file):
    loader = build_dataset(config(data_file, input_columns=["input_ids"]))
    assert isinstance(loader, ResumableDataLoader) and len(loader) == 50 // 4
    batch = next(iter(loader))
    assert list(batch) == ["input_ids"] and batch["input_ids"].shape == (4, LENGTH)
    assert batch["input_ids"].dtype == torch.int64
    seen = sorted(r for b in [batch, *loader] for r in b["input_ids"][:, 0].tolist())
    assert len(seen) == 48 and len(set(seen)) == 48  # one epoch, no repeats, the remainder dropped
    renamed = next(iter(build_dataset(config(data_file, output_columns=["tokens", "targets"]))))
    assert set(renamed) == {"tokens", "targets"} and (renamed["targets"] == -renamed["tokens"]).all()


def test_shuffle_is_seeded_by_seed_and_epoch(data_file):
    a, b = build_dataset(config(data_file)), build_dataset(config(data_file))
    first, again = rows_of(a), rows_of(b)
    assert first == again and sorted(sum(first, [])) != sum(first, [])
    assert rows_of(a) != first  # the next epoch is another permutation
    c = build_dataset(config(data_file, seed=99))
    assert rows_of(c) != first
    unshuffled = build_dataset(
        config(data_file)
        | {
            "dataset_config": {
                **config(data_file)["dataset_config"],
                "data_loader": {"type": "ParquetDataset", "dataset_dir": str(data_file), "shuffle": False},
            }
        }
    )
    assert sum(rows_of(unshuffled), []) == list(range(48))


def test_data_parallel_ranks_read_disjoint_shards(data_file):
    shards = [sum(rows_of(build_dataset(config(data_file, rank_id=r, device_num=3))), []) for r in range(3)]
    assert all(len(s) == 16 for s in shards)
    assert len(set().union(*map(set, shards))) == 48  # disjoint


@pytest.mark.parametrize("k", [0, 3, 12])
def test_resume_after_k_batches_yields_exactly_the_remaining_batches(data_file, k):
    full = build_dataset(config(data_file))
    uninterrupted = rows_of(full) + rows_of(full)  # two epochs
    run = build_dataset(config(data_file))
    it = iter(run)
    taken = [next(it) for _ in range(k)]
    state = run.state_dict()
    resumed = build_dataset(config(data_file))
    resumed.load_state_dict(state)
    continued = rows_of(taken)
    while len(continued) < len(uninterrupted):  # the rest of this epoch, then the next one
        continued += rows_of(resumed)
    assert continued == uninterrupted


def test_resume_with_worker_processes_and_another_world_size(data_file):
    expected = sum(rows_of(build_dataset(config(data_file, batch_size=2))), [])
    one = build_dataset(config(data_file, batch_size=2))
    it = iter(one)
    consumed = sum(rows_of([next(it) for _ in range(6)]), [])  # 12 samples
    state = one.state_dict()
    rest = []
    for r in range(2):  # two ranks, three workers each, batch 3: 12 samples = 2 steps of 2 x 3
        loader = build_dataset(config(data_file, batch_size=3, rank_id=r, device_num=2, num_parallel_workers=2))
        loader.load_state_dict(state)
        rest.append(rows_of(loader))
    steps = [sum((rest[0][i], rest[1][i]), []) for i in range(len(rest[0]))]
    assert sorted(consumed + sum(steps, [])) == sorted(expected[: len(consumed) + 3 * 2 * len(steps)])
    assert set(consumed).isdisjoint(sum(steps, []))
    bad = build_dataset(config(data_file, batch_size=5))
    with pytest.raises(ValueError, match="not a whole number of steps"):
        bad.load_state_dict(state)


def test_damaged_mindrecord_and_missing_inputs_get_clear_errors(data_file, tmp_path):
    record = tmp_path / "alpaca.mindrecord"
    record.write_bytes(b"\x00" * 64)
    (tmp_path / "alpaca.mindrecord.db").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(DatasetFormatError, match="looks like a MindRecord file but has no MindRecord header"):
        build_dataset(config(record))
    with pytest.raises(DatasetFormatError, match="does not exist"):
        build_dataset(config(tmp_path / "nope.parquet"))
    with pytest.raises(DatasetFormatError, match=r"input_columns \['attention_mask'\] are not in"):
        ParquetDataset(str(data_file), columns_list=["attention_mask"])


def test_eod_reset_position_ids():
    ids = torch.tensor([[5, 6, 2, 7, 8, 9, 2, 4]])
    assert eod_position_ids(ids, 2).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
