"""`--dataset_type wikipedia --samples_num N`: Parquet text to the samples MindFormers' own `tokenize_wikipedia`
(its `TrainingDataset`, run by fixtures/make_wikipedia_reference.py) writes from the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from torchformers.tools.dataset_preprocess.llama import llama_preprocess

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run(tmp_path, model_file, *extra, name="out.parquet", workers=1):
    out = tmp_path / name
    argv = ["--dataset_type", "wikipedia", "--input_glob", str(FIXTURES / "wikipedia"), "--seq_length", "127",
            "--model_file", str(model_file), "--output_file", str(out), "--num_workers", str(workers),
            "--no_progress", *extra]  # fmt: skip
    assert llama_preprocess.main(argv) == 0
    table = pq.read_table(out)
    return np.array(table.column("input_ids").to_pylist(), dtype=np.int32), out


def test_wikipedia_samples_equal_mindformers(tmp_path, llama2_model_file):
    expected = np.load(FIXTURES / "wikipedia.input_ids.npy", allow_pickle=False)
    got, out = run(tmp_path, llama2_model_file, "--samples_num", "40")
    assert got.shape == expected.shape == (40, 128)
    assert np.array_equal(got, expected)
    meta = json.loads(Path(f"{out}.meta.json").read_text(encoding="utf-8"))
    assert meta["counts"]["samples"] == 40 and meta["counts"]["passes"] == 2  # the files were read again
    fewer, _ = run(tmp_path, llama2_model_file, "--samples_num", "7", name="fewer.parquet", workers=2)
    assert np.array_equal(fewer, expected[:7])
