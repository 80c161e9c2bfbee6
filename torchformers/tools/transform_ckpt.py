"""Merge or reslice MindSpore per-rank checkpoints: `python -m torchformers.tools.transform_ckpt`.

Follows MindFormers' `mindformers/tools/ckpt_transform/transform_checkpoint.py` (MindSpore's
`transform_checkpoints`), with its argument names:

    python -m torchformers.tools.transform_ckpt --src_checkpoint output/checkpoint \
        --src_strategy output/strategy --dst_checkpoint_dir merged/

* `--src_checkpoint`: a folder of `rank_N/` folders (each rank's newest `.ckpt` is taken), or a complete
  checkpoint (file or folder) when `--src_strategy` is not given;
* `--src_strategy`: the source's strategy file, or the folder of per-rank strategy files;
* `--dst_strategy`: the strategy to slice for (one pipeline stage); without it the result is one complete
  checkpoint.

The output is `<dst_checkpoint_dir>/rank_N/<prefix>N.ckpt` for each destination rank (`rank_0/` alone
when merging), as MindSpore writes it. `--dst_checkpoint`, and `transform_ckpt.py`'s older names
(`--src_ckpt_dir`, `--dst_ckpt_dir`, `--src_ckpt_strategy`, `--dst_ckpt_strategy`), are accepted too;
`--rank_id`, `--world_size`, `--transform_process_num` and `--transform_by_rank` (how MindSpore spreads
the work over processes) have no effect: one process transforms every rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from torchformers.checkpoint import save_checkpoint
from torchformers.checkpoint.loader import read_weights
from torchformers.checkpoint.ms_strategy import pipeline_stages, read_strategy, slice_tensor
from torchformers.errors import ConfigError, run_cli

__all__ = ["main", "transform_checkpoint"]


def _write(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")  # same suffix: the writer picks the format from it
    save_checkpoint(state, tmp)
    os.replace(tmp, path)  # a complete file or none: an earlier output survives a failed run


def transform_checkpoint(
    src_checkpoint: str | Path,
    dst_checkpoint_dir: str | Path,
    *,
    src_strategy: str | Path | None = None,
    dst_strategy: str | Path | None = None,
    prefix: str = "checkpoint_",
) -> list[Path]:
    """Merge `src_checkpoint` (sliced by `src_strategy`, or complete) and slice it for `dst_strategy`
    (or keep it whole); returns the files written, `<dst>/rank_N/<prefix>N.ckpt`."""
    full = read_weights(src_checkpoint, src_strategy=src_strategy or None)
    dst = Path(dst_checkpoint_dir)
    if not dst_strategy:
        out = dst / "rank_0" / f"{prefix}0.ckpt"
        _write(full, out)
        return [out]
    stages = pipeline_stages(dst_strategy)
    if len(stages) > 1:
        raise ConfigError(
            f"--dst_strategy {dst_strategy}: describes {len(stages)} pipeline stages; reslicing for pipeline stages "
            "is not supported: merge (no --dst_strategy) and let the run shard the full checkpoint"
        )
    layouts = read_strategy(dst_strategy)
    ranks = max((layout.device_count for layout in layouts.values()), default=1)
    written = []
    for rank in range(ranks):
        state = {
            name: slice_tensor(tensor, layouts[name], rank, name) if name in layouts else tensor
            for name, tensor in full.items()
        }
        out = dst / f"rank_{rank}" / f"{prefix}{rank}.ckpt"
        _write(state, out)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line; a user error becomes one line on stderr and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="transform_ckpt", description=__doc__.split("\n\n")[0])
    p.add_argument("--src_checkpoint", "--src_ckpt_dir", dest="src_checkpoint", required=True,
                   help="folder of rank_N/ sliced checkpoints, or a complete checkpoint")  # fmt: skip
    p.add_argument("--dst_checkpoint_dir", "--dst_checkpoint", "--dst_ckpt_dir", dest="dst_checkpoint_dir",
                   required=True, help="folder for rank_N/<prefix>N.ckpt")  # fmt: skip
    p.add_argument("--src_strategy", "--src_ckpt_strategy", dest="src_strategy", default=None,
                   help="strategy file or folder of the source (none: the source is complete)")  # fmt: skip
    p.add_argument("--dst_strategy", "--dst_ckpt_strategy", dest="dst_strategy", default=None,
                   help="strategy file or folder to slice for (none: one complete checkpoint)")  # fmt: skip
    p.add_argument("--prefix", default="checkpoint_", help="file name prefix of the output checkpoints")
    for flag in ("--rank_id", "--world_size", "--transform_process_num", "--transform_by_rank"):
        p.add_argument(flag, default=None, help="accepted; no effect (one process transforms every rank)")
    args = p.parse_args(argv)
    for flag in ("rank_id", "world_size", "transform_process_num", "transform_by_rank"):
        if getattr(args, flag) is not None:
            print(f"transform_ckpt: --{flag} has no effect: one process transforms every rank", file=sys.stderr)
    for name in ("src_strategy", "dst_strategy"):
        value = getattr(args, name)
        if value in ("", "None"):
            setattr(args, name, None)
        elif value is not None and not Path(value).exists():
            raise ConfigError(f"--{name} {value}: no such strategy file or folder")
    written = transform_checkpoint(args.src_checkpoint, args.dst_checkpoint_dir, src_strategy=args.src_strategy,
                                   dst_strategy=args.dst_strategy, prefix=args.prefix)  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
