"""The msrun launcher on torchrun (usage forms, per-rank logs) and the layout check against the world size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchformers.parallel import ParallelDims, parallel_dims_from_config
from torchformers.tools.register.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "scripts" / "msrun_launcher.sh"


def _launch(tmp_path, *args, timeout=120):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(LAUNCHER), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_launcher_writes_one_log_per_rank_with_msrun_environment(tmp_path):
    from tests.parallel.test_parallel import _free_port

    script = tmp_path / "show.py"
    script.write_text("import os\nprint('rank', os.environ['RANK_ID'], 'of', os.environ['WORLD_SIZE'])\n")
    proc = _launch(tmp_path, f"{script}", "2", str(_free_port()), "logs", "True", "60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        assert (tmp_path / "logs" / f"worker_{rank}.log").read_text().strip() == f"rank {rank} of 2"


@pytest.mark.parametrize(
    "args, message",
    [(["x.py", "1"], "WORKER_NUM is 1"), (["x.py", "2", "3"], "expected 1, 2, 6 or 9 arguments"),
     (["x.py", "two"], "WORKER_NUM must be a whole number")],
)  # fmt: skip
def test_launcher_refuses_bad_usage_with_a_message(tmp_path, args, message):
    proc = _launch(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_layout_must_fill_the_world_and_unsupported_degrees_are_refused():
    config = {"parallel_config": {"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 1}}
    with pytest.raises(ConfigError, match=r"data_parallel \(2\) x model_parallel \(2\) x pipeline_stage \(1\) = 4"):
        parallel_dims_from_config(_Cfg(config), world_size=2)
    with pytest.raises(ConfigError, match="context_parallel is 2"):
        parallel_dims_from_config(_Cfg({"parallel_config": {"context_parallel": 2}}), world_size=1)
    with pytest.raises(ConfigError, match="micro_batch_num"):
        ParallelDims(pp=2, world_size=2, micro_batch_num=1)
    dims = parallel_dims_from_config(_Cfg({**config, "parallel": {"enable_parallel_optimizer": True}}), world_size=4)
    assert (dims.dp_shard, dims.dp_replicate, [dims.dp_coordinate(r) for r in range(4)]) == (2, 1, [0, 0, 1, 1])


class _Cfg(dict):
    source_file = "x.yaml"
