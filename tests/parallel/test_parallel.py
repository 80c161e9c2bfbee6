"""parallel_config on torch.distributed (gloo, two CPU processes under torchrun) against one process.

One torchrun launch runs every two-rank scenario in turn (dp2 with a replicated optimizer, FSDP2
with the parallel optimizer, tp2, tp2 with sequence and vocabulary parallelism, pp2, resume of the
dp2 checkpoint under tp2, tp2 generation from a full file); the single-process references run in
this process on the same global batch (`runner_config.batch_size` x data_parallel).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.parallel.common import STEPS, losses_of, tiny_parallel_config

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5
BATCH = 4  # global batch of every layout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(output_dir: Path, data: Path, **overrides) -> dict[int, float]:
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    config = tiny_parallel_config(output_dir, data, **overrides)
    build_context(config)
    CausalLanguageModelingTrainer().train(config=config)
    return losses_of(output_dir)


def _layout(dp=1, mp=1, pp=1, **extra) -> dict:
    return {
        "use_parallel": True,
        "parallel_config.data_parallel": dp,
        "parallel_config.model_parallel": mp,
        "parallel_config.pipeline_stage": pp,
        "runner_config.batch_size": BATCH // dp,
        **extra,
    }


UNTIED = {"model.model_config.tie_word_embeddings": False}
SAVE = {"callbacks": [{"type": "CheckpointMonitor", "prefix": "p", "save_checkpoint_steps": 3,
                      "checkpoint_format": "safetensors", "keep_checkpoint_max": 5}]}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, wiki_bytes):
    """Launch the two-rank scenarios once; returns (results by scenario, references, folders)."""
    from tests.trainer.conftest import write_token_rows

    root = tmp_path_factory.mktemp("parallel")
    data = write_token_rows(wiki_bytes, root / "wiki.parquet")
    prompts = [[5, 72, 101, 108], [9, 33]]
    refs = {"tied": _single(root / "ref_tied", data), "untied": _single(root / "ref_untied", data, **UNTIED)}

    # reference generation and the full single-file checkpoint the tp2 generation loads
    from torchformers.checkpoint import save_checkpoint
    from torchformers.tools.register.build import build_model
    from torchformers.trainer.checkpointing import model_state_to_save

    config = tiny_parallel_config(root / "gen", data, **UNTIED)
    torch.manual_seed(3)
    model = build_model(config.model).eval()
    full = root / "full.safetensors"
    save_checkpoint(model_state_to_save(model), full)
    refs["generated"] = [row.tolist() for row in model.generate(prompts, max_new_tokens=6, do_sample=False,
                                                                 use_past=True)]  # fmt: skip

    dp2_out = root / "dp2"
    step3 = dp2_out / "checkpoint" / "rank_0" / "p_rank_0-1_3.safetensors"
    scenarios = [
        ("dp2", "train", {**_layout(dp=2), **SAVE}, dp2_out),
        ("fsdp2", "train", _layout(dp=2, **{"parallel.enable_parallel_optimizer": True}), None),
        ("tp2", "train", _layout(mp=2), None),
        (
            "tp2_sp_vocab",
            "train",
            _layout(mp=2, **{"parallel_config.use_seq_parallel": True, "parallel_config.vocab_emb_dp": False}),
            None,
        ),  # fmt: skip
        ("pp2", "train", _layout(pp=2, **{"parallel_config.micro_batch_num": 2}, **UNTIED), None),
        ("resume_tp2", "train", _layout(mp=2, resume_training=str(step3)), None),
        # from a full weights file: built on the meta device, each rank loads only its shards
        (
            "fsdp2_from_full",
            "train",
            _layout(dp=2, **{"parallel.enable_parallel_optimizer": True}, load_checkpoint=str(full), **UNTIED),
            None,
        ),
        ("tp2_from_full", "train", _layout(mp=2, load_checkpoint=str(full), **UNTIED), None),
    ]
    plan = {"out": str(root), "data": str(data), "scenarios": []}
    for name, kind, overrides, out in scenarios:
        plan["scenarios"].append({"name": name, "kind": kind, "overrides": overrides,
                                  "output_dir": str(out or root / name)})  # fmt: skip
    gen = _layout(mp=2, **{"parallel_config.vocab_emb_dp": False}, **UNTIED)
    plan["scenarios"].append(
        {
            "name": "gen_tp2",
            "kind": "generate",
            "overrides": gen,
            "checkpoint": str(full),
            "prompts": prompts,
            "max_new_tokens": 6,
            "output_dir": str(root / "gen_tp2"),
        }
    )
    (root / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    worker = REPO / "tests" / "parallel" / "worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), str(root / "plan.json")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def result(name: str, rank: int = 0) -> dict:
        got = json.loads((root / f"{name}.rank{rank}.json").read_text())
        assert "error" not in got, f"{name} on rank {rank} failed:\n{got['error']}"
        return got

    # one process resumes the dp2 checkpoint too, and trains from the full weights file
    refs["resume_single"] = _single(root / "resume_single", data, resume_training=str(step3))
    refs["from_full"] = _single(root / "from_full", data, load_checkpoint=str(full), **UNTIED)
    return result, refs, root


@pytest.mark.parametrize(
    "name, ref", [("dp2", "tied"), ("fsdp2", "tied"), ("tp2", "tied"), ("tp2_sp_vocab", "tied"), ("pp2", "untied")]
)
def test_two_rank_training_matches_one_process_step_by_step(runs, name, ref):
    result, refs, _ = runs
    got, want = result(name)["losses"], refs[ref]
    assert sorted(int(k) for k in got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(got[str(step)] - want[step]) < TOL, (name, step, got[str(step)], want[step])
    assert want[STEPS] < want[1]  # it trains


def test_dp2_checkpoint_resumes_under_tp2_and_one_process(runs):
    result, refs, root = runs
    assert (root / "dp2" / "checkpoint" / "p-1_3.distcp" / ".metadata").is_file()
    tp2, single, want = result("resume_tp2")["losses"], refs["resume_single"], refs["tied"]
    assert sorted(int(k) for k in tp2) == [4, 5] and sorted(single) == [4, 5]
    for step in (4, 5):
        assert abs(tp2[str(step)] - want[step]) < TOL
        assert abs(single[step] - want[step]) < TOL


def test_dp2_writes_full_weights_that_load_on_one_device(runs):
    from torchformers.checkpoint import load_checkpoint

    _, _, root = runs
    files = sorted((root / "dp2" / "checkpoint_network").glob("rank_*/*.safetensors"))
    # one writer (rank 0), one file that the saves at steps 3 and 5 replace, as MindFormers names it
    assert [f.relative_to(files[0].parent.parent).as_posix() for f in files] == ["rank_0/p_rank_0-network.safetensors"]
    state = load_checkpoint(files[-1])
    assert state["model.layers.0.attention.wq.weight"].shape == (32, 32)


def test_tp2_greedy_generation_matches_one_process(runs):
    result, refs, _ = runs
    for rank in (0, 1):
        got = result("gen_tp2", rank)
        assert got["generated"] == refs["generated"]
        # the weights really are split: half the heads and half the vocabulary on each rank
        assert got["local_shapes"]["model.layers.0.attention.wq.weight"] == [16, 32]
        assert got["local_shapes"]["lm_head.weight"] == [128, 32]


@pytest.mark.parametrize("name", ["fsdp2_from_full", "tp2_from_full"])
def test_sharded_training_from_a_full_checkpoint_matches_one_process(runs, name):
    result, refs, _ = runs
    got, want = result(name)["losses"], refs["from_full"]
    assert sorted(int(k) for k in got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(got[str(step)] - want[step]) < TOL, (name, step, got[str(step)], want[step])


@pytest.mark.parametrize("name", ["tp2", "pp2"])
def test_sliced_runs_write_their_strategy(runs, name):
    """`strategy/ckpt_strategy_rank_<r>.json` says which block of each parameter every rank holds: the blocks
    of the two ranks tile each tensor-parallel weight, and the pipeline stages own disjoint layers."""
    _, _, root = runs
    docs = [json.loads((root / name / "strategy" / f"ckpt_strategy_rank_{r}.json").read_text()) for r in (0, 1)]
    assert [d["rank"] for d in docs] == [0, 1] and all(d["world_size"] == 2 for d in docs)
    wq = "model.layers.0.attention.wq.weight"
    if name == "tp2":
        blocks = [d["parameters"][wq] for d in docs]
        assert blocks[0]["placements"] == {"tp": "Shard(0)"}
        rows = blocks[0]["shape"][0]
        assert [b["offset"][0] for b in blocks] == [0, rows // 2]
        assert sum(b["local_shape"][0] for b in blocks) == rows
        norm = docs[0]["parameters"]["model.layers.0.attention_norm.weight"]
        assert norm["placements"] == {} and norm["local_shape"] == norm["shape"]
    else:
        stages = [set(d["pipeline"]["layers"]) for d in docs]
        assert [d["pipeline"]["stage"] for d in docs] == [0, 1] and not stages[0] & stages[1]
        assert (wq in docs[0]["parameters"]) != (wq in docs[1]["parameters"])
    assert not (root / "dp2" / "strategy").exists()  # data parallelism alone slices nothing
