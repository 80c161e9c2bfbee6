#!/usr/bin/env python
"""Training throughput: torchformers' train step against transformers' LlamaForCausalLM in a plain AdamW loop.

Both sides train the same Llama shape on the same random token batches in this one process, so the
allocator and thread settings are the same for both (performance-notes.md: glibc's mmap threshold
and bf16 autocast matter on CPU; run e.g. `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000
python bench/train.py` to give both sides the faster heap). Ours: `LlamaForCausalLM` built from
`LlamaConfig`, the `AdamW` optimizer registered under MindFormers' name (fused kernel), and the
`MFTrainOneStepCell` step (autocast from `compute_dtype`, clipping). Theirs: transformers
`LlamaForCausalLM` (sdpa), `torch.optim.AdamW` defaults, `clip_grad_norm_`, the same autocast.

Defaults are the ~100M-parameter model of performance-notes.md (hidden 768, 12 layers, 12 heads / 4 KV,
FFN 2048, vocab 32000, tied, seq 512, batch 4); use `--layers 2 --steps 3` for a quick check.
"""

from __future__ import annotations

import argparse
import contextlib
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
    return p.parse_args()


def batches(args, n, device):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, args.vocab, (args.batch, args.seq + 1), generator=g).to(device) for _ in range(n)]


def ours(args, device, dtype):
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
    from torchformers.trainer.optimizer import AdamW, get_optimizer_grouped_parameters
    from torchformers.trainer.wrapper import MFTrainOneStepCell

    config = LlamaConfig(
        seq_length=args.seq, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        n_kv_heads=args.kv_heads, intermediate_size=args.ffn, vocab_size=args.vocab, tie_word_embeddings=True,
        compute_dtype="bfloat16" if dtype == torch.bfloat16 else "float32", param_init_type="float32",
        pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device).train()
    opt = AdamW(get_optimizer_grouped_parameters(model, 0.1), learning_rate=1e-4)
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


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    data = batches(args, args.warmup + args.steps, device)
    results = {"torchformers": [], "transformers": []}
    for _ in range(args.rounds):
        for name, build in (("torchformers", ours), ("transformers", theirs)):
            model, step = build(args, device, dtype)
            results[name].append(measure(step, data, args, device))
            n = sum(p.numel() for p in model.parameters())
            del model, step
        print(f"params {n / 1e6:.1f}M  ours {results['torchformers'][-1]:.1f} tok/s  "
              f"transformers {results['transformers'][-1]:.1f} tok/s", flush=True)  # fmt: skip
    best = {k: max(v) for k, v in results.items()}
    print(f"device {device}, {args.dtype}, seq {args.seq}, batch {args.batch}, threads {torch.get_num_threads()}")
    print(f"torchformers {best['torchformers']:.1f} tokens/s, transformers {best['transformers']:.1f} tokens/s, "
          f"ratio {best['torchformers'] / best['transformers']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
