"""Resuming a training run from the checkpoint MindFormers' own `CheckpointMonitor` wrote.

The fixture (`fixtures/make_mindformers_resume.py`, made with the real MindSpore + MindFormers on CPU)
is a tiny fp32 Llama trained by MindFormers for 3 steps of 4 per epoch, its training checkpoint after
step 3 (weights, `adam_m` / `adam_v` moments, `epoch_num`, `step_num`, `global_step`, `loss_scale`,
...), and the losses MindFormers computed for all 8 steps of 2 epochs. Resumed here with
`--resume_training True --load_checkpoint <its checkpoint folder>`, the run must skip the 3 batches
already consumed, continue with MindFormers' optimizer state and compute MindFormers' losses for steps
4-8 (across the epoch boundary): fp32 on both sides, compared to 1e-5 relative.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.conftest import tiny_config, write_token_rows

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mindformers_resume"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RTOL = 1e-5


def mindformers_run_config(output_dir: Path, data: Path, **extra):
    s = EXPECTED["settings"]
    overrides = {
        "model.model_config.vocab_size": s["vocab_size"],
        "model.model_config.seq_length": s["seq_length"],
        "model.model_config.hidden_size": s["hidden_size"],
        "model.model_config.num_layers": s["num_layers"],
        "model.model_config.num_heads": s["num_heads"],
        "model.model_config.n_kv_heads": s["n_kv_heads"],
        "model.model_config.intermediate_size": s["intermediate_size"],
        "model.model_config.rms_norm_eps": s["rms_norm_eps"],
        "model.model_config.theta": s["theta"],
        "model.model_config.pad_token_id": s["pad_token_id"],
        "model.model_config.bos_token_id": s["bos_token_id"],
        "model.model_config.eos_token_id": s["eos_token_id"],
        "model.model_config.tie_word_embeddings": False,
        "runner_config.batch_size": s["batch_size"],
        "train_dataset.batch_size": s["batch_size"],
        "train_dataset.data_loader.shuffle": False,
        "runner_config.epochs": s["epochs"],
        "runner_config.stop_step": 0,
        "optimizer": {"type": "AdamW", "betas": s["betas"], "eps": s["eps"], "weight_decay": s["weight_decay"]},
        "lr_schedule": {"type": "ConstantWarmUpLR", "learning_rate": s["learning_rate"], "warmup_steps": 0},
        "runner_wrapper": {"type": "MFTrainOneStepCell", "use_clip_grad": True, "max_grad_norm": s["max_grad_norm"],
                           "scale_sense": 1.0},
        "callbacks": [],
        **extra,
    }  # fmt: skip
    return tiny_config(output_dir, data, **overrides)


def losses(output_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture
def mindformers_data(tmp_path) -> Path:
    rows = np.load(FIXTURE / "data.npy")
    return write_token_rows(rows.reshape(-1), tmp_path / "data.parquet", seq_length=rows.shape[1] - 1)


@pytest.mark.parametrize("names", ["as_written", "unprefixed", "fused_adamw"])
def test_resume_from_mindformers_checkpoint_gives_mindformers_next_losses(tmp_path, mindformers_data, names):
    """`as_written`: the file MindSpore 2.9 wrote (optimizer state as `optimizer.adam_m.<name>`,
    `optimizer.global_step`); `unprefixed`: the same tensors under the names without that prefix
    (`adam_m.<name>`, `global_step`), as MindFormers 1.3.2 checkpoints name them; `fused_adamw`: the moments
    under the names MindFormers' FusedAdamW gives them (`exp_avg.<name>`, `exp_avg_sq.<name>`)."""
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    checkpoints = tmp_path / "mf_checkpoint"  # a copy: nothing is written next to the fixture
    shutil.copytree(FIXTURE / "checkpoint", checkpoints)
    if names != "as_written":
        from torchformers.checkpoint.loader import read_weights
        from torchformers.checkpoint.ms_ckpt import save_ckpt

        (path,) = (checkpoints / "rank_0").glob("*.ckpt")
        tensors = read_weights(path)
        assert any(k.startswith("optimizer.adam_m.") for k in tensors)
        renamed = {k.removeprefix("optimizer."): v for k, v in tensors.items() if k != "optimizer.global_step"}
        if names == "fused_adamw":
            fused = {"adam_m.": "exp_avg.", "adam_v.": "exp_avg_sq."}
            renamed = {fused.get(k[:7], k[:7]) + k[7:]: v for k, v in renamed.items()}
            assert any(k.startswith("exp_avg_sq.") for k in renamed)
        save_ckpt(renamed.items(), path)
    out = tmp_path / "out"
    config = mindformers_run_config(out, mindformers_data, resume_training=True, load_checkpoint=str(checkpoints))
    build_context(config)
    ctx = CausalLanguageModelingTrainer().train(config=config)

    expected = EXPECTED["losses"]  # MindFormers' losses of steps 1..8; the checkpoint holds steps 1..3
    saved_at = EXPECTED["settings"]["save_checkpoint_steps"]
    got = losses(out)
    assert sorted(got) == list(range(saved_at + 1, len(expected) + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], expected[saved_at:], rtol=RTOL)
    assert ctx.global_step == len(expected)
    log = (out / "log" / "rank_0" / "info.log").read_text()
    assert "not restored: RNG states" in log  # MindFormers' file has no RNG or data-set state: said once


def test_weights_alone_do_not_give_mindformers_next_loss(tmp_path, mindformers_data):
    """The comparison can fail: without the optimizer moments (weights only) the losses after the next differ."""
    from torchformers.checkpoint.loader import read_weights
    from torchformers.checkpoint.ms_ckpt import save_ckpt
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    source = next((FIXTURE / "checkpoint" / "rank_0").glob("*.ckpt"))
    tensors = read_weights(source)
    folder = tmp_path / "ckpt" / "rank_0"
    folder.mkdir(parents=True)
    kept = {k: v for k, v in tensors.items() if "adam_" not in k}
    save_ckpt(kept.items(), folder / source.name)
    out = tmp_path / "out"
    config = mindformers_run_config(out, mindformers_data, resume_training=True, load_checkpoint=str(tmp_path / "ckpt"))
    build_context(config)
    CausalLanguageModelingTrainer().train(config=config)
    expected, saved_at = EXPECTED["losses"], EXPECTED["settings"]["save_checkpoint_steps"]
    got = losses(out)
    assert got[saved_at + 1] == pytest.approx(expected[saved_at], rel=RTOL)  # the next loss needs weights only
    assert got[saved_at + 2] != pytest.approx(expected[saved_at + 1], rel=RTOL)
