#!/usr/bin/env python
"""GPU figures for a lent H100/H200: FSDP2 + torch.compile training MFU, and batch-1 decode vs bandwidth.

1. `train`: a ~1.2B-parameter Llama (Llama-3.2-1B shape: hidden 2048, 16 layers, 32 heads / 8 KV,
   FFN 8192, vocab 128256, tied) in bf16, wrapped by `torchformers.parallel` as the trainer does
   (per-layer `torch.compile`, then FSDP2 `fully_shard` on a one-GPU mesh), trained with fused AdamW
   through `MFTrainOneStepCell` on random tokens. Reports tokens/s and MFU = tokens/s x FLOPs/token /
   peak bf16 dense FLOP/s (FLOPs/token: the trainer's `flops_per_token`, 6 x matmul params + causal
   attention). Target: MFU >= 45%.
2. `decode`: a Llama-3-8B-shaped model (hidden 4096, 32 layers, 32 / 8 heads, FFN 14336, vocab 128256)
   with random bf16 weights, built on the meta device and materialised on the GPU; greedy batch-1
   `generate` with the static KV cache and the compiled decode step (`compile_decode=True`). The time of
   the decode steps alone is the difference of two runs with different numbers of new tokens. The
   bandwidth limit is (bytes of the weights read per token: all but the embedding table) / HBM bandwidth.
   Target: >= 80% of that limit.

Run on one GPU: `python bench/gpu.py` (both), `--only train|decode`, `--steps`, `--batch`, `--seq`.
Refuses to run without CUDA; it is not part of the CPU tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# dense bf16 peak FLOP/s and HBM bandwidth (bytes/s) of the SXM parts
SPECS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}


def spec() -> tuple[str, float, float]:
    name = torch.cuda.get_device_name()
    for key, (flops, bw) in SPECS.items():
        if key in name:
            return name, flops, bw
    return name, float(os.environ.get("PEAK_FLOPS", 989e12)), float(os.environ.get("HBM_BW", 3.35e12))


def llama_config(**kw):
    from torchformers.models.llama.llama_config import LlamaConfig

    base = dict(vocab_size=128256, num_heads=32, n_kv_heads=8, rms_norm_eps=1e-5, theta=500000.0,
                compute_dtype="bfloat16", param_init_type="bfloat16", embedding_init_type="bfloat16",
                layernorm_compute_type="float32", rotary_dtype="float32", pad_token_id=128004)  # fmt: skip
    base.update(kw)
    return LlamaConfig(**base)


def bench_train(args, device) -> dict:
    import torch.distributed as dist

    from torchformers.models.llama.llama import LlamaForCausalLM
    from torchformers.parallel import ParallelDims, parallelize_model
    from torchformers.trainer.optimizer import get_optimizer_grouped_parameters
    from torchformers.trainer.train_loop import flops_per_token
    from torchformers.trainer.wrapper import MFTrainOneStepCell

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29555")
    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    cfg = llama_config(hidden_size=2048, num_layers=16, intermediate_size=8192, seq_length=args.seq,
                       tie_word_embeddings=True)  # fmt: skip
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    # dp=1 skips FSDP in parallelize_model; a one-GPU bench still wants FSDP2's code path, so apply it here
    plan = parallelize_model(model, ParallelDims(world_size=1), device, compile=True)
    from torchformers.parallel import apply_fsdp

    apply_fsdp(model, plan.mesh["dp_shard"])
    model.train()
    groups = get_optimizer_grouped_parameters(model, 0.1)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=True)
    step = MFTrainOneStepCell(model, optimizer, use_clip_grad=True, compute_dtype=torch.bfloat16, device=device)
    data = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device) for _ in range(4)]
    for i in range(args.warmup):
        step([data[i % 4]])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        out = step([data[i % 4]])
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = args.steps * args.batch * args.seq
    name, peak, _ = spec()
    tps = tokens / elapsed
    fpt = flops_per_token(model)
    return {"bench": "train", "device": name, "params": n_params, "batch": args.batch, "seq": args.seq,
            "tokens_per_s": round(tps), "flops_per_token": fpt, "mfu": round(tps * fpt / peak, 4),
            "loss": out.loss, "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}  # fmt: skip


def bench_decode(args, device) -> dict:
    from torchformers.models.llama.llama import LlamaForCausalLM

    cfg = llama_config(hidden_size=4096, num_layers=32, intermediate_size=14336, seq_length=8192,
                       max_position_embedding=8192, tie_word_embeddings=False)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.to_empty(device=device)
    model.init_buffers(device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    read_bytes = weight_bytes - model.model.tok_embeddings.embedding_weight.nbytes  # one row of it per token
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt,)).tolist()

    def run(new: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        # no eos: every run decodes exactly `new` tokens
        model.generate(prompt, max_new_tokens=new, do_sample=False, use_past=True, compile_decode=True,
                       eos_token_id=[])  # fmt: skip
        torch.cuda.synchronize()
        return time.perf_counter() - t

    run(args.short)  # compiles prefill shapes and the decode step
    run(args.long)
    short, long = min(run(args.short) for _ in range(2)), min(run(args.long) for _ in range(2))
    per_token = (long - short) / (args.long - args.short)
    name, _, bw = spec()
    limit = bw / read_bytes
    return {"bench": "decode", "device": name, "weight_gib": round(weight_bytes / 2**30, 2),
            "tokens_per_s": round(1 / per_token, 1), "bandwidth_limit_tokens_per_s": round(limit, 1),
            "fraction_of_limit": round(1 / per_token / limit, 4)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["train", "decode"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--short", type=int, default=16)
    p.add_argument("--long", type=int, default=272)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (H100/H200); nothing to measure on CPU")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    for name, fn in (("train", bench_train), ("decode", bench_decode)):
        if args.only in (None, name):
            print(json.dumps(fn(args, device)), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
