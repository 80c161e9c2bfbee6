#!/usr/bin/env python
"""Training throughput: torchformers' train step against transformers' LlamaForCausalLM in a plain AdamW loop.

Both sides train the same Llama shape on the same random token batches. Each side of each round runs
in a fresh subprocess (rounds alternate the sides: the machines are noisy, compare the best-of), so
each reports its own peak resident memory (VmHWM) and neither inherits the other's heap. Allocator
and thread settings come from the environment and are the same for both (performance-notes.md:
glibc's mmap threshold matters on CPU; run e.g. `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000
python bench/train.py` to give both sides the faster heap).

What each side does, per `--dtype`:

* torchformers (ours): `LlamaForCausalLM` from `LlamaConfig`, `MFTrainOneStepCell` (clipping at 1.0),
  the loss through the model's chunked linear + cross-entropy. With `bf16` it is the configuration a
  MindFormers user writes for bf16 training: `param_init_type: bfloat16`, `compute_dtype: bfloat16`
  and `optimizer: {type: FP32StateAdamWeightDecay}`: bf16 weights, fp32 master weights and fp32 Adam
  moments in the optimizer, no autocast. With `fp32`: fp32 weights, `AdamW` (fused kernel).
* transformers (theirs): `LlamaForCausalLM` (sdpa), fp32 weights, `torch.optim.AdamW` defaults (foreach),
  `clip_grad_norm_(1.0)`; with `bf16` the forward runs under `torch.autocast(bfloat16)` (the standard
  recipe: fp32 weights and optimizer, bf16 matmuls).

Defaults are the ~100M-parameter model of performance-notes.md (hidden 768, 12 layers, 12 heads / 4 KV,
FFN 2048, vocab 32000, tied, seq 512, batch 4); use `--layers 2 --steps 3` for a quick check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--hidden", type=int, default=768)
    a("--layers", type=int, default=12)
    a("--heads", type=int, default=12)
    a("--kv_heads", type=int, default=4)
    a("--ffn", type=int, default=2048)
    a("--vocab", type=int, default=32000)
    a("--seq", type=int, default=512)
    a("--batch", type=int, default=4)
    a("--steps", type=int, default=5, help="timed steps per side")
    a("--warmup", type=int, default=2, help="untimed steps per side")
    a("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute dtype (autocast) on both sides")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--rounds", type=int, default=1, help="alternate the two sides this many times (noisy machines)")
    a("--side", choices=["torchformers", "transformers"], help="run one side in this process (used internally)")
    return p.parse_args()


def batches(args, n, device):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, args.vocab, (args.batch, args.seq + 1), generator=g).to(device) for _ in range(n)]


def ours(args, device, dtype):
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
    from torchformers.trainer.optimizer import AdamW, FP32StateAdamWeightDecay, get_optimizer_grouped_parameters
    from torchformers.trainer.wrapper import MFTrainOneStepCell

    dtype_name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    config = LlamaConfig(
        seq_length=args.seq, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        n_kv_heads=args.kv_heads, intermediate_size=args.ffn, vocab_size=args.vocab, tie_word_embeddings=True,
        compute_dtype=dtype_name, param_init_type=dtype_name, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device).train()
    optim_cls = FP32StateAdamWeightDecay if dtype == torch.bfloat16 else AdamW
    opt = optim_cls(get_optimizer_grouped_parameters(model, 0.1), learning_rate=1e-4, eps=1e-8)
    step = MFTrainOneStepCell(model, opt, use_clip_grad=True, max_grad_norm=1.0, compute_dtype=config.compute_dtype)
    return model, lambda ids: step([{"input_ids": ids}]).loss


def theirs(args, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, intermediate_size=args.ffn, vocab_size=args.vocab,
        max_position_embeddings=args.seq + 1, tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step(ids):
        with amp:
            loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def measure(step, data, args, device) -> float:
    for ids in data[: args.warmup]:
        step(ids)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids in data[args.warmup :]:
        step(ids)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch * args.seq / (time.perf_counter() - start)


def peak_rss_gb() -> float:
    """This process's peak resident set size (VmHWM) in GB."""
    with open("/proc/self/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb * 1024 / 1e9


def run_side(args) -> None:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    data = batches(args, args.warmup + args.steps, device)
    model, step = (ours if args.side == "torchformers" else theirs)(args, device, dtype)
    tok_s = measure(step, data, args, device)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"tok_s": tok_s, "peak_rss_gb": peak_rss_gb(), "params": n, "threads": torch.get_num_threads()}))


def main() -> None:
    args = parse()
    if args.side:
        return run_side(args)
    argv = list(sys.argv[1:])
    results: dict[str, list[dict]] = {"torchformers": [], "transformers": []}
    for _ in range(args.rounds):
        for name in results:
            out = subprocess.run(
                [sys.executable, __file__, *argv, "--side", name], check=True, capture_output=True, text=True,
                env=os.environ,
            )  # fmt: skip
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        ours_r, theirs_r = results["torchformers"][-1], results["transformers"][-1]
        print(f"params {ours_r['params'] / 1e6:.1f}M  "
              f"ours {ours_r['tok_s']:.1f} tok/s ({ours_r['peak_rss_gb']:.2f} GB)  "
              f"transformers {theirs_r['tok_s']:.1f} tok/s ({theirs_r['peak_rss_gb']:.2f} GB)", flush=True)  # fmt: skip
    best = {k: max(r["tok_s"] for r in v) for k, v in results.items()}
    peak = {k: max(r["peak_rss_gb"] for r in v) for k, v in results.items()}
    print(f"device {args.device}, {args.dtype}, seq {args.seq}, batch {args.batch}, "
          f"threads {results['torchformers'][-1]['threads']}")  # fmt: skip
    print(f"torchformers {best['torchformers']:.1f} tokens/s (peak RSS {peak['torchformers']:.2f} GB), "
          f"transformers {best['transformers']:.1f} tokens/s (peak RSS {peak['transformers']:.2f} GB), "
          f"ratio {best['torchformers'] / best['transformers']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
