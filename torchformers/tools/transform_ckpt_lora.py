"""Merge LoRA adapters into plain weights: `python -m torchformers.tools.transform_ckpt_lora`.

Follows MindFormers' `mindformers/tools/transform_ckpt_lora.py` (docs/feature_cards/Transform_Lorackpt.md):
a finetuned checkpoint holding base weights plus `*.mindpet_delta_lora_a/_b` adapters becomes a plain
checkpoint with `W + B A * lora_scaling` and no adapters, loadable by a model without `pet_config`.
The scaling is `lora_alpha / lora_rank`, taken from `--config` (its `model.model_config.pet_config`) or
given as `--lora_scaling`. An adapter-only file can be merged into a base checkpoint with `--base`.

    python -m torchformers.tools.transform_ckpt_lora \
        --src_ckpt_path_or_dir output/checkpoint_network/rank_0/x_rank_0-network.safetensors \
        --dst_ckpt_dir output/merged --config configs/smollm2/finetune_smollm2_135m_lora.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchformers.checkpoint import save_checkpoint
from torchformers.checkpoint.loader import read_weights
from torchformers.errors import ConfigError, run_cli
from torchformers.pet.lora import LORA_A, merge_lora_state_dict
from torchformers.tools.register.config import MindFormerConfig

__all__ = ["main", "merge_checkpoint"]


def merge_checkpoint(src: Path, dst: Path, pet_config: dict, base: Path | None = None) -> Path:
    """Write `src` (plus `base` weights when `src` holds adapters only) merged, to `dst`; returns `dst`."""
    state = read_weights(src)
    if base is not None:
        state = {**read_weights(base), **state}
    if not any(k.endswith(LORA_A) for k in state):
        raise ConfigError(f"{src}: no LoRA adapters (*.mindpet_delta_lora_a) to merge")
    merged = merge_lora_state_dict(state, pet_config)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(merged, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    """The command line; a user error becomes one line on stderr and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="transform_ckpt_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--src_ckpt_path_or_dir", required=True, help="checkpoint file with adapters, or a folder of them")
    p.add_argument("--dst_ckpt_dir", required=True, help="folder for the merged checkpoint(s)")
    p.add_argument("--config", help="YAML whose model.model_config.pet_config gives lora_rank and lora_alpha")
    p.add_argument("--lora_scaling", type=float, help="lora_alpha / lora_rank, when no --config is given")
    p.add_argument("--base", help="base checkpoint, when the source holds adapters only")
    p.add_argument("--prefix", default="merged_", help="prefix of the merged file names")
    args = p.parse_args(argv)
    if args.config:
        pet_config = MindFormerConfig(args.config).get_value("model.model_config.pet_config")
        if not pet_config:
            raise ConfigError(f"{args.config}: no model.model_config.pet_config")
        rank, alpha = pet_config.get("lora_rank", 8), pet_config.get("lora_alpha", 16)
    elif args.lora_scaling is not None:
        rank, alpha = 1, args.lora_scaling
    else:
        raise ConfigError("give --config (a YAML with pet_config) or --lora_scaling (lora_alpha / lora_rank)")
    # merging needs only the scale; the adapters in the file say which weights they belong to
    pet_config = {"pet_type": "lora", "lora_rank": rank, "lora_alpha": alpha, "target_modules": ".*"}
    src = Path(args.src_ckpt_path_or_dir)
    if src.is_dir():
        files = sorted(f for f in src.rglob("*") if f.suffix in (".safetensors", ".ckpt"))
    elif src.is_file():
        files = [src]
    else:
        raise ConfigError(f"--src_ckpt_path_or_dir {src}: no such file or folder")
    if not files:
        raise ConfigError(f"--src_ckpt_path_or_dir {src}: no .safetensors or .ckpt files in it")
    for f in files:
        out = merge_checkpoint(f, Path(args.dst_ckpt_dir) / f"{args.prefix}{f.name}", pet_config,
                               Path(args.base) if args.base else None)  # fmt: skip
        print(f"merged {f} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
