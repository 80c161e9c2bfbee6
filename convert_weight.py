"""Weight conversion command line, with MindFormers' arguments (MindFormers `convert_weight.py`).

    python convert_weight.py --model llama --input_path HF_DIR --output_path out/llama.ckpt --dtype bf16
    python convert_weight.py --model llama --input_path out/llama.ckpt --output_path hf_out/ --reversed
    python convert_weight.py --model llama --input_path model.gguf --output_path out/model.safetensors
    python convert_weight.py --model llama --input_path HF_DIR/config.json --output_path fused.ckpt --qkv_concat True
    python convert_weight.py --model llama --input_path HF_DIR --output_path int4.safetensors --quantize int4
    python convert_weight.py --model qwen2 --register_path research/qwen2 --input_path HF_DIR --output_path q.ckpt

Native output is `.safetensors` or `.ckpt` (by suffix). `--input_path` may name a Hugging Face folder or
its `config.json`. `--qkv_concat True` writes the fused `attention.w_qkv` / `feed_forward.w_gate_hidden`
of MindFormers' `qkv_concat` models (head counts from the folder's `config.json`). `--reversed` writes
Hugging Face names to `.safetensors` (a folder gets `model.safetensors`) or `.bin`. GGUF input also writes `config.json`
beside the output. `--quantize int8|int4` (`--group_size`, default 32) writes the linear layers' weights as
int8 per output channel or int4 groups (packed integers, scales and zero points; the settings in the
file's metadata), for inference; it needs the model's `config.json`. Unknown `--key value` pairs are
accepted and ignored, as MindFormers forwards them.
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

import torch

from torchformers.checkpoint import CheckpointError, convert_checkpoint
from torchformers.checkpoint.convert import key_map_models
from torchformers.checkpoint.loader import read_weights
from torchformers.errors import ConfigError
from torchformers.generation.quantization import quantization_settings, quantize_state_dict, save_quantized
from torchformers.tools.register import MindFormerRegister
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
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        default=None,
        help="write a quantized .safetensors: int8 per output channel or int4 in groups (--group_size); "
        "needs the model's config.json (beside the input, or read from a GGUF file)",
    )
    parser.add_argument("--group_size", type=int, default=32, help="input columns per int4 group: 32, 64, 128, 256")
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
    output_path = Path(args.output_path)
    if args.quantize:  # convert to a float file beside the output first, then quantize that
        if args.reversed or output_path.suffix != ".safetensors":
            print(
                "convert_weight.py: --quantize writes a native .safetensors file (not with --reversed)", file=sys.stderr
            )
            return 2
        output_path = output_path.with_name(f".{output_path.stem}.float.safetensors")
    try:
        config = convert_checkpoint(
            args.input_path,
            output_path,
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
    if args.quantize:
        try:
            config_json = config_path if config is not None else _config_json(args.input_path)
            wanted = {"quant_method": args.quantize}
            if args.quantize == "int4":
                wanted["group_size"] = args.group_size
            settings = quantization_settings(wanted, "convert_weight.py --quantize")
            _quantize_file(output_path, Path(args.output_path), args.model, config_json, settings)
        except (CheckpointError, ConfigError) as exc:
            print(f"convert_weight.py: {exc}", file=sys.stderr)
            return 1
        finally:
            output_path.unlink(missing_ok=True)
    print(f"converted {args.input_path} -> {args.output_path} in {time.perf_counter() - start:.1f} s")
    return 0


def _config_json(input_path: str) -> Path:
    path = Path(input_path)
    found = path if path.name == "config.json" else (path if path.is_dir() else path.parent) / "config.json"
    if not found.is_file():
        raise ConfigError(f"--quantize needs the model's config.json (which layers are linear); no {found}")
    return found


def _quantize_file(float_path: Path, output: Path, model: str, config_json: Path, settings) -> None:
    """Quantize the linear layers' weights of a native float checkpoint into `output`."""
    spec = MindFormerRegister.model_specs[model]
    with torch.device("meta"):  # only the layer names are needed
        network = spec.model_classes[0](spec.config_class.from_pretrained(config_json))
    state = quantize_state_dict(read_weights(float_path), network, settings)
    save_quantized(state, output, settings)
    print(f"quantized: {settings.describe()}")


if __name__ == "__main__":
    sys.exit(main())
