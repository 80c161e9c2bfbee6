"""Helpers shared by the parallel tests and their torchrun worker: the tiny config and its losses."""

from __future__ import annotations

import json
from pathlib import Path

from tests.trainer.conftest import tiny_config

STEPS = 5


def tiny_parallel_config(output_dir: Path, data: Path, **overrides):
    """The trainer tests' tiny byte-level Llama (fp32), `STEPS` steps, no callbacks but metrics."""
    values = {
        "runner_config.stop_step": STEPS,
        "callbacks": [],
        "lr_schedule.warmup_ratio": 0.0,  # full learning rate from step 1, so the steps differ visibly
        "model.model_config.num_heads": 4,
        "model.model_config.n_kv_heads": 2,
        **overrides,
    }
    return tiny_config(output_dir, data, **values)


def losses_of(output_dir: Path) -> dict[int, float]:
    rows = map(json.loads, (Path(output_dir) / "metrics.jsonl").read_text().splitlines())
    return {int(r["step"]): float(r["loss"]) for r in rows}
