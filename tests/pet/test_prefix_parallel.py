"""P-Tuning v2 under data parallelism (gloo, two CPU processes under torchrun): plain DDP-style replication
and FSDP2 give the losses of one process on the same global batch, and the adapters are gathered and
saved; tensor parallelism is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.parallel.common import STEPS
from tests.parallel.test_parallel import REPO, _free_port, _layout, _single

PET = {
    "model.model_config.pet_config": {"pet_type": "ptuning2", "pre_seq_len": 4, "prefix_projection": True,
                                      "projection_dim": 16, "dropout_prob": 0.0},
    "lr_schedule.learning_rate": 3e-2,
}  # fmt: skip


def test_prefix_data_parallel_matches_one_process(tmp_path, wiki_parquet):
    from torchformers.checkpoint.loader import read_weights

    reference = _single(tmp_path / "ref", wiki_parquet, **PET)
    scenarios = {
        "dp2": _layout(dp=2),
        "fsdp2": _layout(dp=2, **{"parallel.enable_parallel_optimizer": True}),
        "tp2": _layout(mp=2),
    }
    plan = {"out": str(tmp_path), "data": str(wiki_parquet), "scenarios": [
        {"name": name, "kind": "train", "overrides": {**layout, **PET}, "output_dir": str(tmp_path / name)}
        for name, layout in scenarios.items()
    ]}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "tests" / "parallel" / "worker.py"),
           str(tmp_path / "plan.json")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("dp2", "fsdp2"):
        got = json.loads((tmp_path / f"{name}.rank0.json").read_text())
        assert "error" not in got, got.get("error")
        for step in range(1, STEPS + 1):
            assert abs(got["losses"][str(step)] - reference[step]) < 1e-5, (name, step)
        adapters = read_weights(Path(tmp_path / name / "adapter" / "adapter_model.safetensors"))
        assert set(adapters) == {
            "mindpet_delta_ptuning2_prefix", "mindpet_delta_ptuning2_embedding.embedding_table",
            "mindpet_delta_ptuning2_trans.0.weight", "mindpet_delta_ptuning2_trans.0.bias",
            "mindpet_delta_ptuning2_trans.2.weight", "mindpet_delta_ptuning2_trans.2.bias",
        }  # fmt: skip
        assert adapters["mindpet_delta_ptuning2_embedding.embedding_table"].shape[0] == 4  # whole, not a shard
    assert reference[STEPS] < reference[1]
    refused = json.loads((tmp_path / "tp2.rank0.json").read_text())["error"]
    assert "ConfigError: pet_config.pet_type ptuning2 runs data parallel only" in refused
