"""Weight conversion speed and memory: `convert_checkpoint` against plain `torch.load` + `torch.save`.

A random Llama (SmolLM2-135M shape by default) is written with transformers' `save_pretrained` (safetensors)
and with `torch.save` (.bin) into a temporary folder. Each conversion then runs in a fresh process, which
reports wall time and peak RSS over its own baseline (RSS after imports):

- ours, HF safetensors -> native .safetensors and -> native .ckpt (streaming, one tensor at a time);
- plain: `torch.load(pytorch_model.bin)`, rename with the same key map, `torch.save` (whole dict in memory).

    PYTHONPATH=. python bench/convert.py [--hidden 576 --layers 30 --vocab 49152 --ffn 1536]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    # ru_maxrss carries the parent's peak across fork/exec; VmHWM is per process and "5" resets it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(mode: str, src: str, dst: str) -> None:
    import torch

    from torchformers.checkpoint import convert_checkpoint
    from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP

    baseline = _status_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if mode == "ours":
        convert_checkpoint(src, dst, model="llama")
    else:
        state = torch.load(src, map_location="cpu", weights_only=True)
        torch.save({LLAMA_HF_KEY_MAP.to_native(k): v for k, v in state.items()}, dst)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    print(json.dumps({"seconds": seconds, "baseline_mib": baseline, "peak_over_baseline_mib": peak - baseline}))


def _run(mode: str, src: Path, dst: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(src), str(dst)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=9 if args.hidden % 9 == 0 else 8,
        num_key_value_heads=3 if args.hidden % 9 == 0 else 4,
        tie_word_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = transformers.LlamaForCausalLM(config)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        total = sum(v.numel() * v.element_size() for v in state.values())
        largest = max(v.numel() * v.element_size() for v in state.values())
        model.save_pretrained(tmp / "hf")
        torch.save(state, tmp / "pytorch_model.bin")
        del model, state
        params = total / 4
        print(
            f"model: {params / 1e6:.0f}M params, {total / 2**20:.0f} MiB fp32, largest tensor {largest / 2**20:.0f} MiB"
        )
        runs = {
            "ours HF safetensors -> native .safetensors": _run("ours", tmp / "hf", tmp / "native.safetensors"),
            "ours HF safetensors -> native .ckpt": _run("ours", tmp / "hf", tmp / "native.ckpt"),
            "plain torch.load + torch.save (.bin)": _run("plain", tmp / "pytorch_model.bin", tmp / "native.bin"),
        }
    print(f"{'conversion':46s} {'GB/s':>7s} {'seconds':>8s} {'peak RSS over baseline':>24s}")
    for name, r in runs.items():
        peak = r["peak_over_baseline_mib"]
        print(
            f"{name:46s} {total / r['seconds'] / 1e9:7.2f} {r['seconds']:8.2f} "
            f"{peak:9.0f} MiB ({peak * 2**20 / largest:4.2f}x largest)"
        )


if __name__ == "__main__":
    main()
