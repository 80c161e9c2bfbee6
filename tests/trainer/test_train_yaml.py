"""Pretraining from the tiny YAML through run_mindformer's code path: loss falls, outputs are where
MindFormers puts them, evaluation reports loss and perplexity."""

from __future__ import annotations

import json
import math

import torch

from tests.trainer.conftest import TINY_YAML, VOCAB, tiny_config, tiny_overrides


def read_metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_from_yaml_lowers_loss_and_writes_outputs(tmp_path, wiki_parquet):
    from torchformers.cli import main

    out = tmp_path / "out"
    argv = ["--config", str(TINY_YAML), "--run_mode", "train"]
    argv += tiny_overrides(out, wiki_parquet, **{"runner_config.stop_step": 40})
    assert main(argv) == 0
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 41))
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert abs(first - math.log(VOCAB)) < 0.3, first  # random init predicts about uniformly
    assert last < first - 1.5, (first, last)
    ckpt_dir = out / "checkpoint" / "rank_0"
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    assert meta["last_ckpt_file"] == "llama_tiny_rank_0-1_40.safetensors"
    # keep_checkpoint_max 2 with saves at 30 and 40 (and the end, 40 again)
    assert sorted(p.name for p in ckpt_dir.glob("*.safetensors")) == [
        "llama_tiny_rank_0-1_30.safetensors",
        "llama_tiny_rank_0-1_40.safetensors",
    ]
    # MindFormers' names: one weights file, replaced by every save; error.log beside info.log
    assert [p.name for p in (out / "checkpoint_network" / "rank_0").iterdir()] == [
        "llama_tiny_rank_0-network.safetensors"
    ]
    assert not (out / "checkpoint_trainable").exists()  # save_trainable_params is off
    assert {p.name for p in (out / "log" / "rank_0").iterdir()} == {"info.log", "error.log"}
    assert (out / "loss_curve.png").stat().st_size > 1000
    # lr follows warmup then cosine decay to lr_end over the epoch (total_steps -1)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == 0.0 and max(lrs) <= 3e-3 + 1e-12 and lrs[-1] < max(lrs)


def test_evaluate_reports_token_weighted_loss_and_perplexity(tmp_path, wiki_parquet):
    from torchformers.trainer import CausalLanguageModelingTrainer

    config = tiny_config(tmp_path, wiki_parquet, run_mode="eval", **{"eval_dataset.data_loader.num_samples": 64})
    trainer = CausalLanguageModelingTrainer()
    torch.manual_seed(0)
    network = trainer.build_network(config)
    metrics = trainer.evaluate(config, network=network)
    dataset = trainer.build_dataset(config, "eval_dataset")
    total = count = 0.0
    with torch.no_grad():
        for batch in dataset:
            per_token, mask = network.compute_loss(batch["input_ids"], reduction="none")
            total, count = total + float(per_token.sum()), count + float(mask.sum())
    assert math.isclose(metrics["loss"], total / count, rel_tol=1e-5)
    assert math.isclose(metrics["perplexity"], math.exp(metrics["loss"]), rel_tol=1e-9)


def test_save_trainable_params_writes_mindformers_trainable_file(tmp_path, wiki_parquet):
    from tests.trainer.test_resume import run
    from torchformers.checkpoint.loader import read_weights

    out = tmp_path / "out"
    monitor = {"type": "CheckpointMonitor", "prefix": "tp", "save_checkpoint_steps": 2, "checkpoint_format": "ckpt",
               "save_network_params": False, "save_trainable_params": True}  # fmt: skip
    run(tiny_config(out, wiki_parquet, **{"runner_config.stop_step": 2, "callbacks": [monitor]}))
    assert not (out / "checkpoint_network").exists()
    (path,) = (out / "checkpoint_trainable" / "rank_0").iterdir()
    assert path.name == "tp_rank_0-trainable_params.ckpt"
    assert "model.norm_out.weight" in read_weights(path)
