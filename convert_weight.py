"""Weight conversion command line, with MindFormers' arguments (MindFormers `convert_weight.py`).

    python convert_weight.py --model llama --input_path HF_DIR --output_path out/llama.ckpt --dtype bf16
    python convert_weight.py --model llama --input_path out/llama.ckpt --output_path hf_out/ --reversed
    python convert_weight.py --model llama --input_path model.gguf --output_path out/model.safetensors
    python convert_weight.py --model llama --input_path HF_DIR/config.json --output_path fused.ckpt --qkv_concat True
    python convert_weight.py --model qwen2 --register_path research/qwen2 --input_path HF_DIR --output_path q.ckpt

Native output is `.safetensors` or `.ckpt` (by suffix). `--input_path` may name a Hugging Face folder or
its `config.json`. `--qkv_concat True` writes the fused `attention.w_qkv` / `feed_forward.w_gate_hidden`
of MindFormers' `qkv_concat` models (head counts from the folder's `config.json`). `--reversed` writes
Hugging Face names to `.safetensors` (a folder gets `model.safetensors`) or `.bin`. GGUF input also writes `config.json`
beside the output. Unknown `--key value` pairs are accepted and ignored, as MindFormers forwards them.
`--model` is a registered model family (`ModelSpec`) with a key map. `--register_path DIR` (current
directory first, then the repository root) imports the files of an external model family's folder
first, so the family its `MindFormerRegister.register_model_spec` call registers becomes a `--model`
choice and its GGUF files readable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from torchformers.checkpoint import CheckpointError, convert_checkpoint
from torchformers.checkpoint.convert import key_map_models
from torchformers.errors import ConfigError
from torchformers.tools.register.paths import import_register_path
from torchformers.utils import DTYPES, str2bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert weights between Hugging Face, GGUF and native formats.")
    parser.add_argument(
        "--model",
        required=True,
        help=f"model family: {', '.join(key_map_models())}, or one registered by the --register_path code",
    )
    parser.add_argument(
        "--register_path", default=None, help="folder of an external model family whose files register its spec"
    )
    parser.add_argument("--reversed", action="store_true", help="native -> Hugging Face")
    parser.add_argument("--input_path", required=True)
    parser.add_argument("--output_path", required=True)
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), metavar="{fp32,fp16,bf16}", help="cast floating-point weights"
    )
    parser.add_argument(
        "--qkv_concat",
        type=str2bool,
        default=False,
        help="write fused attention.w_qkv / feed_forward.w_gate_hidden (MindFormers' qkv_concat layout)",
    )
    parser.add_argument("--allow_pickle", action="store_true", help="let a trusted .bin/.pt holding objects load")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        print(f"convert_weight.py: ignoring extra arguments {' '.join(extra)}", file=sys.stderr)
    if args.register_path is not None:
        try:
            import_register_path(args.register_path)
        except ConfigError as exc:
            print(f"convert_weight.py: {exc}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    try:
        config = convert_checkpoint(
            args.input_path,
            args.output_path,
            model=args.model,
            dtype=args.dtype,
            reversed=args.reversed,
            allow_pickle=args.allow_pickle,
            qkv_concat=args.qkv_concat,
        )
    except (CheckpointError, ConfigError, ValueError) as exc:
        print(f"convert_weight.py: {exc}", file=sys.stderr)
        return 1
    if config is not None:
        config_path = Path(args.output_path).parent / "config.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote {config_path}")
    print(f"converted {args.input_path} -> {args.output_path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
