"""Fixtures for trainer tests: Wikipedia text as byte tokens in Parquet, and the tiny YAML made tinier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "configs" / "tiny" / "pretrain_llama_tiny.yaml"
SEQ = 32
VOCAB = 256  # byte-level tokens; 0 never occurs in the text and is the pad id


def write_token_rows(tokens: np.ndarray, path: Path, seq_length: int = SEQ) -> Path:
    n = len(tokens) // (seq_length + 1)
    rows = tokens[: n * (seq_length + 1)].astype(np.int32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(rows), seq_length + 1)
    pq.write_table(pa.Table.from_arrays([column], names=["input_ids"]), path)
    return path


@pytest.fixture(scope="session")
def wiki_bytes() -> np.ndarray:
    from torchformers.tools.assets import fetch

    data = fetch("text/wiki.utf8").read_bytes()[:40_000]
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


@pytest.fixture
def wiki_parquet(tmp_path, wiki_bytes) -> Path:
    return write_token_rows(wiki_bytes, tmp_path / "wiki.parquet")


def tiny_overrides(output_dir: Path, data: Path, **extra) -> list[str]:
    """Command-line overrides turning the tiny YAML into a seconds-long byte-level run."""
    values = {
        "output_dir": str(output_dir),
        "train_dataset.data_loader.dataset_dir": str(data),
        "eval_dataset.data_loader.dataset_dir": str(data),
        "model.model_config.vocab_size": VOCAB,
        "model.model_config.seq_length": SEQ,
        "model.model_config.bos_token_id": 1,
        "model.model_config.eos_token_id": 2,
        "model.model_config.pad_token_id": 0,
        "model.model_config.hidden_size": 32,
        "model.model_config.intermediate_size": 64,
        "runner_config.stop_step": 20,
        **extra,
    }
    return [f"--{k}={v}" for k, v in values.items()]


def tiny_config(output_dir: Path, data: Path, run_mode: str = "train", yaml: Path = TINY_YAML, **extra):
    from torchformers.cli import config_from_args

    structured = {k: v for k, v in extra.items() if isinstance(v, (list, dict, bool))}
    plain = {k: v for k, v in extra.items() if k not in structured}
    config = config_from_args(
        ["--config", str(yaml), "--run_mode", run_mode, *tiny_overrides(output_dir, data, **plain)]
    )
    for key, value in structured.items():
        config.set_value(key, value)
    return config
