"""Run under `torchrun --nproc_per_node 2`: several parallel layouts of the tiny Llama, one launch.

Usage: `worker.py <plan.json>`; the plan lists scenarios `{name, overrides, kind}` and the data; each
rank writes `<out>/<name>.rank<r>.json` with what it saw (losses, generated ids).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.parallel.common import losses_of, tiny_parallel_config  # noqa: E402


def train(spec: dict, out: Path, data: Path) -> dict:
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    config = tiny_parallel_config(Path(spec["output_dir"]), data, **spec["overrides"])
    build_context(config)
    CausalLanguageModelingTrainer().train(config=config)
    return {"losses": losses_of(Path(spec["output_dir"]))} if dist.get_rank() == 0 else {}


def generate(spec: dict, out: Path, data: Path) -> dict:
    from torchformers.parallel import build_parallel_model, parallel_dims_from_config

    config = tiny_parallel_config(Path(spec["output_dir"]), data, **spec["overrides"])
    dims = parallel_dims_from_config(config)
    model, _ = build_parallel_model(config.model, dims, torch.device("cpu"), checkpoint=spec["checkpoint"])
    model.eval()
    ids = model.generate(spec["prompts"], max_new_tokens=spec["max_new_tokens"], do_sample=False, use_past=True)
    local = {n: tuple(p.to_local().shape) for n, p in model.named_parameters() if hasattr(p, "to_local")}
    return {"generated": [row.tolist() for row in ids], "local_shapes": local}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    out, data = Path(plan["out"]), Path(plan["data"])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for spec in plan["scenarios"]:
        try:
            result = {"train": train, "generate": generate}[spec["kind"]](spec, out, data)
        except Exception:
            result = {"error": traceback.format_exc()}
        (out / f"{spec['name']}.rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
