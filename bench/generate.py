"""Generation speed: torchformers `generate` against transformers `generate` on the same random Llama.

Default shape is SmolLM2-135M (hidden 576, 30 layers, 9 heads / 3 KV, FFN 1536, vocab 49152, tied),
fp32 on CPU, prompts of 32 tokens, 128 new tokens, batch 1 and 8, greedy. Both sides time
`generate(max_new_tokens=1)` (prefill + one sampling step) and `generate(max_new_tokens=N)`; decode
tokens/s = batch * (N - 1) / (t_N - t_1). Peak memory is the largest resident-set growth above the
level before the call
(sampled every 2 ms: working memory; the weights are listed separately). Times are the best of
`--repeats` runs. Ours runs with `prepare_for_cpu_inference` unless
`--no-prepack`; `--also-unpacked` adds a row without it.

    PYTHONPATH=. python bench/generate.py                      # full size
    PYTHONPATH=. python bench/generate.py --layers 2 --new-tokens 16 --batch-sizes 1   # quick check
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from torchformers.generation import prepare_for_cpu_inference
from torchformers.models import LlamaConfig, LlamaForCausalLM


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Largest RSS growth over the level at entry, sampled in a thread."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.base


def weight_mib(model: torch.nn.Module) -> float:
    """Parameter bytes plus prepacked copies (which are plain attributes, not parameters)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    for m in model.modules():
        packed = getattr(m, "packed_weight", None)
        if packed is not None:
            total += packed.numel() * packed.element_size()
    return total / 2**20


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(name, run, batch, prompt_len, new_tokens, repeats):
    """run(n) generates n new tokens for the batch and returns the token rows."""
    run(2)  # warm-up
    t1 = min(timed(lambda: run(1))[0] for _ in range(repeats))
    with PeakRSS() as mem:
        tn, rows = timed(lambda: run(new_tokens))
    for _ in range(repeats - 1):
        tn = min(tn, timed(lambda: run(new_tokens))[0])
    return {
        "name": name,
        "batch": batch,
        "prefill_ms": t1 * 1000,
        "prefill_tps": batch * prompt_len / t1,
        "decode_tps": batch * (new_tokens - 1) / max(tn - t1, 1e-9),
        "peak_mib": mem.growth / 2**20,
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--untied", action="store_true", help="separate lm_head (default: tied, as SmolLM2)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--no-prepack", action="store_true", help="skip prepare_for_cpu_inference")
    p.add_argument("--also-unpacked", action="store_true", help="also time ours without prepacking")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="best of this many timed runs")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    torch.manual_seed(args.seed)
    hf_config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=not args.untied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(hf_config).eval().float()
    n_params = sum(p.numel() for p in hf.parameters())
    ours = LlamaForCausalLM(LlamaConfig(**hf_config.to_dict())).eval()
    ours.load_checkpoint(hf.state_dict())
    unpacked = None
    if args.also_unpacked:
        unpacked = LlamaForCausalLM(ours.config).eval()
        unpacked.load_checkpoint(hf.state_dict())
    if not args.no_prepack:
        prepare_for_cpu_inference(ours)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    print(f"model: {n_params / 1e6:.1f}M parameters, fp32, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print(f"weights held: transformers {weight_mib(hf):.0f} MiB, torchformers {weight_mib(ours):.0f} MiB")

    results = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        g = torch.Generator().manual_seed(args.seed + batch)
        ids = torch.randint(3, args.vocab, (batch, args.prompt_len), generator=g)
        prompts = ids.tolist()

        def run_ours(n, model=ours, prompts=prompts):
            out = model.generate(prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=2)
            return [o[args.prompt_len :].tolist() for o in out]

        def run_hf(n, ids=ids):
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)  # fmt: skip
            return out[:, args.prompt_len :].tolist()

        with torch.inference_mode():
            rows = [measure("torchformers" + ("" if args.no_prepack else " (prepacked)"), run_ours, batch,
                            args.prompt_len, args.new_tokens, args.repeats)]  # fmt: skip
            if unpacked is not None:
                rows.append(measure("torchformers (F.linear)", lambda n: run_ours(n, unpacked), batch,
                                    args.prompt_len, args.new_tokens, args.repeats))  # fmt: skip
            if not args.skip_hf:
                rows.append(measure("transformers", run_hf, batch, args.prompt_len, args.new_tokens, args.repeats))
        results.append(rows)

    header = ("impl", "batch", "prefill ms", "prefill tok/s", "decode tok/s", "peak MiB")
    print("\n{:28s} {:>5s} {:>11s} {:>14s} {:>13s} {:>9s}".format(*header))
    for rows in results:
        for r in rows:
            print(f"{r['name']:28s} {r['batch']:5d} {r['prefill_ms']:11.1f} {r['prefill_tps']:14.1f} "
                  f"{r['decode_tps']:13.1f} {r['peak_mib']:9.1f}")  # fmt: skip
    if not args.skip_hf:
        print()
        for rows in results:
            ours_r, hf_r = rows[0], rows[-1]
            same = ours_r["rows"] == hf_r["rows"]
            detail = ""
            if not same:
                firsts = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
                          for x, y in zip(ours_r["rows"], hf_r["rows"])]  # fmt: skip
                detail = f" (first differing step per row: {firsts})"
            decode_ratio = ours_r["decode_tps"] / hf_r["decode_tps"]
            prefill_ratio = hf_r["prefill_ms"] / ours_r["prefill_ms"]
            print(
                f"batch {ours_r['batch']}: ours/transformers decode {decode_ratio:.2f}x, "
                f"prefill {prefill_ratio:.2f}x, greedy tokens identical: {same}{detail}"
            )


if __name__ == "__main__":
    main()
