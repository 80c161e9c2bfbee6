"""Exact resume, kill -9 during a checkpoint write, SIGTERM saving, NaN stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tests.trainer.conftest import REPO, tiny_config

N = 6


def run(config):
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    build_context(config)
    return CausalLanguageModelingTrainer().train(config=config)


def losses(output_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())}


def test_stopped_and_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path, wiki_parquet):
    common = {"runner_config.gradient_accumulation_steps": 2, "callbacks": []}
    full = tmp_path / "full"
    run(tiny_config(full, wiki_parquet, **{"runner_config.stop_step": 2 * N, **common}))
    part = tmp_path / "part"
    ckpt = {"callbacks": [{"type": "CheckpointMonitor", "prefix": "t", "save_checkpoint_steps": N}]}
    run(tiny_config(part, wiki_parquet, **{**common, **ckpt, "runner_config.stop_step": N}))
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it starts with
    run(
        tiny_config(part, wiki_parquet, **{**common, **ckpt, "runner_config.stop_step": 2 * N, "resume_training": True})
    )
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 2 * N + 1))
    assert b[2 * N] == a[2 * N]  # bit for bit
    assert [b[s] for s in range(N + 1, 2 * N + 1)] == [a[s] for s in range(N + 1, 2 * N + 1)]


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, pathlib
    sys.path.insert(0, {repo!r})
    import torchformers.checkpoint as ck
    real = ck.save_checkpoint
    calls = [0]
    def slow_save(tensors, path, **kw):
        calls[0] += 1
        if calls[0] == 3:  # the 2nd train-state file (network weights are written in between)
            real(tensors, path, **kw)
            data = pathlib.Path(path).read_bytes()
            pathlib.Path(path).write_bytes(data[: len(data) // 2])  # half written
            pathlib.Path({ready!r}).write_text("now")
            time.sleep(60)
        return real(tensors, path, **kw)
    ck.save_checkpoint = slow_save
    from tests.trainer.conftest import tiny_config
    from tests.trainer.test_resume import run
    run(tiny_config(pathlib.Path({out!r}), pathlib.Path({data!r}), **{{
        "runner_config.stop_step": 6,
        "callbacks": [{{"type": "CheckpointMonitor", "prefix": "k", "save_checkpoint_steps": 2,
                        "checkpoint_format": "ckpt"}}]}}))
    """
)


def test_kill_9_during_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path, wiki_parquet):
    from torchformers.trainer.checkpointing import find_resume_checkpoint, load_train_state

    out, ready = tmp_path / "out", tmp_path / "ready"
    script = KILL_SCRIPT.format(repo=str(REPO), ready=str(ready), out=str(out), data=str(wiki_parquet))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None, "the training process ended before the checkpoint write"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    path = find_resume_checkpoint(out, True)
    assert path.name == "k_rank_0-1_2.ckpt"
    config = tiny_config(out, wiki_parquet)
    from torchformers.trainer import CausalLanguageModelingTrainer

    model = CausalLanguageModelingTrainer()._bare(config)
    info = load_train_state(path, model, None)
    assert info["global_step"] == 2
    # and training resumes from it
    resumed = run(tiny_config(out, wiki_parquet, **{"runner_config.stop_step": 3, "resume_training": True,
                                                     "callbacks": []}))  # fmt: skip
    assert resumed.global_step == 3


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path, wiki_parquet):
    from torchformers.trainer import TrainingInterrupted
    from torchformers.trainer.callbacks import Callback

    class KillAt(Callback):
        def on_train_step_end(self, ctx):
            if ctx.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    config = tiny_config(tmp_path, wiki_parquet, **{"callbacks": []})
    build_context(config)
    with pytest.raises(TrainingInterrupted) as err:
        CausalLanguageModelingTrainer().train(config=config, callbacks=[KillAt()])
    assert err.value.code == 128 + signal.SIGTERM
    meta = json.loads((tmp_path / "checkpoint" / "rank_0" / "meta.json").read_text())
    assert meta["last_ckpt_file"] == "CKP_rank_0-1_3.safetensors"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tmp_path, wiki_parquet):
    from torchformers.trainer import NonFiniteLossError
    from torchformers.trainer.callbacks import Callback

    class Poison(Callback):
        def __init__(self, model):
            self.model = model

        def on_train_step_end(self, ctx):
            if ctx.global_step == 4:
                with torch.no_grad():
                    self.model.model.norm_out.weight.fill_(float("nan"))

    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    monitor = {
        "type": "CheckpointMonitor",
        "prefix": "n",
        "save_checkpoint_steps": 2,
        "checkpoint_format": "safetensors",
    }
    config = tiny_config(tmp_path, wiki_parquet, callbacks=[monitor])
    build_context(config)
    trainer = CausalLanguageModelingTrainer()
    model = trainer.build_network(config)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step 5 .*n_rank_0-1_4\.safetensors"):
        trainer.train(config=config, network=model, callbacks=[Poison(model)])
    good = tmp_path / "checkpoint" / "rank_0" / "n_rank_0-1_4.safetensors"
    from torchformers.trainer.checkpointing import read_weights

    assert all(torch.isfinite(t).all() for t in read_weights(good).values())


def test_own_checkpoint_resumes_from_the_tensors_file_alone(tmp_path, wiki_parquet):
    """The loop scalars are inside the file (MindFormers' names and dtypes): with the `.json` beside it
    removed, `--resume_training True --load_checkpoint <folder>` still continues with the same losses."""
    from torchformers.checkpoint.loader import read_weights

    common = {"callbacks": [], "train_dataset.data_loader.shuffle": False}
    full = tmp_path / "full"
    run(tiny_config(full, wiki_parquet, **{"runner_config.stop_step": N + 2, **common}))
    part = tmp_path / "part"
    ckpt = {"callbacks": [{"type": "CheckpointMonitor", "prefix": "t", "save_checkpoint_steps": N,
                           "checkpoint_format": "ckpt"}]}  # fmt: skip
    run(tiny_config(part, wiki_parquet, **{**common, **ckpt, "runner_config.stop_step": N}))
    folder = part / "checkpoint"
    (path,) = (folder / "rank_0").glob("*.ckpt")
    tensors = read_weights(path)
    assert {k: (v.dtype, tuple(v.shape), v.reshape(-1)[0].item()) for k, v in tensors.items() if v.dim() <= 1 and
            k in ("epoch_num", "step_num", "global_step", "global_batch_size")} == {
        "epoch_num": (torch.int64, (), 1),
        "step_num": (torch.int64, (), N),
        "global_step": (torch.int32, (1,), N),
        "global_batch_size": (torch.int64, (), 4),
    }  # fmt: skip
    assert f"adam_m.{next(k for k in tensors if k.startswith('model.layers.0.attention.wq'))}" in tensors
    for sidecar in folder.rglob("*.json"):
        sidecar.unlink()  # meta.json too: the newest file is found without it
    resumed = tmp_path / "resumed"
    run(tiny_config(resumed, wiki_parquet, **{**common, "runner_config.stop_step": N + 2, "resume_training": True,
                                              "load_checkpoint": str(folder)}))  # fmt: skip
    a, b = losses(full), losses(resumed)
    assert sorted(b) == [N + 1, N + 2]
    assert [b[s] for s in b] == [a[s] for s in b]
