"""MindRecord files written by MindSpore's own `FileWriter` (fixtures/make_mindrecord_fixtures.py) read back to
the arrays MindSpore reads from them, feed the same loader as Parquet, and train to the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from torchformers.dataset import (
    DatasetFormatError,
    MindRecordDataset,
    MindRecordFile,
    ParquetDataset,
    build_dataset,
    build_dataset_loader,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def expected(name: str) -> np.ndarray:
    return np.load(FIXTURES / f"{name}.npy", allow_pickle=False)


def rows(dataset, column="input_ids") -> np.ndarray:
    return np.stack([dataset[i][column] for i in range(len(dataset))])


def loader_config(path, columns=("input_ids",), **extra):
    dataset_config = {
        "data_loader": {"type": "MindDataset", "dataset_dir": str(path), "shuffle": True},
        "input_columns": list(columns),
        "batch_size": 4,
        "drop_remainder": True,
        "num_parallel_workers": 0,
        "seed": 7,
    }
    return {"type": "CausalLanguageModelDataset", "dataset_config": dataset_config | extra}


def test_wiki_and_qa_files_read_back_to_the_written_arrays():
    wiki = MindRecordFile(FIXTURES / "wiki.mindrecord")
    assert wiki.schema_name == "wiki" and wiki.columns == ["input_ids"] and wiki.num_rows == 500
    assert len({p["page_id"] for p in wiki.header["page"] if p["page_type"] == "BLOB_DATA"}) > 1  # rows span pages
    got = np.stack([wiki.row(i)["input_ids"] for i in range(wiki.num_rows)])
    assert got.dtype == np.int32 and np.array_equal(got, expected("wiki.input_ids"))

    qa = build_dataset_loader({"type": "MindDataset", "dataset_dir": str(FIXTURES / "alpaca.mindrecord")})
    assert isinstance(qa, MindRecordDataset) and qa.columns == ["input_ids", "labels"]
    assert np.array_equal(rows(qa), expected("alpaca.input_ids"))
    assert np.array_equal(rows(qa, "labels"), expected("alpaca.labels"))
    assert (rows(qa, "labels") == -100).any()  # negative values survive the integer compression


def test_one_shard_stands_for_all_shards_a_list_or_folder_is_taken_as_given(tmp_path):
    in_read_order = expected("wiki_shards.input_ids")  # MindSpore's MindDataset, unshuffled
    for name in ("wiki_shards.mindrecord0", "wiki_shards.mindrecord2"):
        dataset = build_dataset_loader({"type": "MindDataset", "dataset_dir": str(FIXTURES / name), "shuffle": False})
        assert [p.name for p in dataset.files] == [f"wiki_shards.mindrecord{k}" for k in range(3)]
        assert np.array_equal(rows(dataset), in_read_order)
    written = expected("wiki_shards.written")
    assert sorted(map(tuple, in_read_order)) == sorted(map(tuple, written))  # every row once

    by_shard, start = [], 0  # a list is read as given: one file, one shard
    for k in range(3):
        shard = str(FIXTURES / f"wiki_shards.mindrecord{k}")
        one = build_dataset_loader({"type": "MindDataset", "dataset_files": [shard]})
        assert [p.name for p in one.files] == [f"wiki_shards.mindrecord{k}"]
        by_shard.append(rows(one))
        assert np.array_equal(by_shard[k], in_read_order[start : start + len(one)])
        start += len(one)
    assert start == len(written)

    folder = tmp_path / "data"
    (folder / "part").mkdir(parents=True)
    for k in range(3):  # every *.mindrecord[N] file under the folder, .db files not; sorted by path as MindFormers
        for suffix in ("", ".db"):
            name = f"wiki_shards.mindrecord{k}{suffix}"
            shutil.copy(FIXTURES / name, folder / ("part" if k == 2 else "") / name)
    (folder / "notes.txt").write_text("not data")
    dataset = build_dataset_loader({"type": "MindDataset", "dataset_dir": str(folder)})
    assert [p.relative_to(folder).as_posix() for p in dataset.files] == [
        "part/wiki_shards.mindrecord2", "wiki_shards.mindrecord0", "wiki_shards.mindrecord1"]  # fmt: skip
    assert np.array_equal(rows(dataset), np.concatenate([by_shard[2], by_shard[0], by_shard[1]]))


def test_every_mindrecord_type_reads_as_mindspore_reads_it():
    ref = np.load(FIXTURES / "general.npz", allow_pickle=False)
    dataset = MindRecordDataset(str(FIXTURES / "general.mindrecord0"))
    assert dataset.columns == list(json.loads(json.dumps(dataset.shards[0].fields)))
    got = [dataset[i] for i in range(len(dataset))]
    assert len(got) == len(ref["label"]) == 40
    for name in ("label", "big", "score", "dscore"):
        values = np.array([r[name] for r in got])
        assert values.dtype == ref[name].dtype and np.array_equal(values, ref[name]), name
    assert [r["name"] for r in got] == ref["name"].tolist()
    for name in ("image", "vec", "small", "ids"):
        assert [r[name].size for r in got] == ref[f"{name}.lengths"].tolist(), name
        flat = np.concatenate([r[name].reshape(-1) for r in got])
        assert flat.dtype == ref[name].dtype and np.array_equal(flat, ref[name]), name
    assert got[0]["ids"].shape == (2, 3)  # the schema's shape [2, -1]
    assert {int(np.abs(r["ids"]).max()).bit_length() > 31 for r in got} == {True}  # 8-byte values


def test_the_parquet_loader_machinery_shuffles_shards_and_resumes_mindrecord():
    path = FIXTURES / "wiki.mindrecord"
    written = expected("wiki.input_ids")
    first = [b["input_ids"] for b in build_dataset(loader_config(path))]
    again = [b["input_ids"] for b in build_dataset(loader_config(path))]
    assert all((a == b).all() for a, b in zip(first, again))  # seeded
    seen = torch.cat(first).numpy().astype(np.int32)
    assert len(seen) == 500 // 4 * 4 and not np.array_equal(seen, written[: len(seen)])  # shuffled
    assert len({r.tobytes() for r in seen}) == len(seen)  # each row at most once
    assert {r.tobytes() for r in seen} <= {r.tobytes() for r in written}

    shards = [torch.cat([b["input_ids"] for b in build_dataset(loader_config(path, rank_id=r, device_num=2))])
              for r in range(2)]  # fmt: skip
    assert not {r.numpy().tobytes() for r in shards[0]} & {r.numpy().tobytes() for r in shards[1]}

    run = build_dataset(loader_config(path))
    it = iter(run)
    taken = [next(it)["input_ids"] for _ in range(10)]
    resumed = build_dataset(loader_config(path, num_parallel_workers=2))
    resumed.load_state_dict(run.state_dict())
    rest = [b["input_ids"] for b in resumed]
    assert all((a == b).all() for a, b in zip(taken + rest, first)) and len(taken + rest) == len(first)


def write_parquet(path: Path, columns: dict[str, np.ndarray]) -> Path:
    arrays = [pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) for v in columns.values()]
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path, row_group_size=64)
    return path


@pytest.mark.parametrize(
    ("name", "yaml", "run_mode", "columns"),
    [
        ("wiki", "pretrain_llama_tiny.yaml", "train", ["input_ids"]),
        ("alpaca", "finetune_llama_tiny.yaml", "finetune", ["input_ids", "labels"]),
    ],
)
def test_training_on_mindrecord_gives_the_losses_of_the_same_samples_in_parquet(
    tmp_path, name, yaml, run_mode, columns
):
    from tests.trainer.conftest import TINY_YAML, tiny_config
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    parquet = write_parquet(tmp_path / f"{name}.parquet", {c: expected(f"{name}.{c}") for c in columns})
    losses = {}
    for kind, data in (("mindrecord", FIXTURES / f"{name}.mindrecord"), ("parquet", parquet)):
        out = tmp_path / kind
        extra = {"runner_config.stop_step": 6, "train_dataset.input_columns": columns, "load_checkpoint": ""}
        config = tiny_config(out, data, run_mode=run_mode, yaml=TINY_YAML.with_name(yaml), **extra)
        build_context(config)
        CausalLanguageModelingTrainer().train(config=config)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[kind] = [r["loss"] for r in records]
    assert len(losses["parquet"]) == 6 and losses["mindrecord"] == losses["parquet"]


def test_damaged_and_mistaken_inputs_get_one_line_errors(tmp_path):
    cut = tmp_path / "wiki.mindrecord"
    cut.write_bytes((FIXTURES / "wiki.mindrecord").read_bytes()[:30000])
    with pytest.raises(DatasetFormatError, match="truncated"):
        MindRecordDataset(str(cut))
    with pytest.raises(DatasetFormatError, match=r"missing: .*wiki_shards\.mindrecord1"):
        shutil.copy(FIXTURES / "wiki_shards.mindrecord0", tmp_path / "wiki_shards.mindrecord0")
        MindRecordDataset(str(tmp_path / "wiki_shards.mindrecord0"))
    fake = tmp_path / "alpaca.mindrecord"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetFormatError, match="no MindRecord header"):
        build_dataset_loader({"type": "MindDataset", "dataset_dir": str(fake)})
    with pytest.raises(DatasetFormatError, match="use type MindDataset"):
        ParquetDataset(str(FIXTURES / "alpaca.mindrecord"))
    with pytest.raises(DatasetFormatError, match=r"input_columns \['attention_mask'\] are not in"):
        MindRecordDataset(str(FIXTURES / "alpaca.mindrecord"), columns_list=["attention_mask"])
