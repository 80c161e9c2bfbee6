"""Decode speed of the quantized variants of a real checkpoint, and llama.cpp on the same GGUF file, in one run.

Variants: fp32 (prepacked, predict's default), bf16, int8, int4 in groups of 32 (both round-to-nearest
from the fp32 weights), and the GGUF file kept quantized (`quant_method: gguf`: SmolLM2's Q4_1 blocks
as int4, its Q8_0 embedding / head as int8), built as `bench/quality.py` builds them. Each is timed
with `bench/generate.py`'s `measure` (prefill + one token against prefill + N tokens, greedy), the
variants interleaved over `--rounds` rounds with the best round kept, so that a busy machine slows them
alike; batch 1 and batch 8 (aggregate tokens/s over the batch).

With `--llama-python` (an interpreter with `llama-cpp-python`, see docs/performance_tuning.md; by
default `/work/llamaenv/bin/python` where it exists), llama.cpp runs `bench/llama_cpp_decode.py` as a
subprocess on the same GGUF file, the same prompt, thread count and number of new tokens, greedy,
batch 1, once per round. Perplexity is `bench/quality.py`'s job.

    python scripts/prepare_smollm2.py
    PYTHONPATH=. python bench/quantized.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import measure  # noqa: E402
from quality import gguf_path, held_mib, load_variant  # noqa: E402

VARIANTS = {
    "fp32 (prepacked)": "fp32",
    "bf16": "bf16",
    "int8": "int8",
    "int4 g32": "int4-g32",
    "int4 from GGUF Q4_1": "gguf",
}
LLAMA_PYTHON = "/work/llamaenv/bin/python"


def llama_cpp(python: str, gguf: Path, threads: int, prompt: list[int], new_tokens: int) -> dict | None:
    script = Path(__file__).resolve().parent / "llama_cpp_decode.py"
    cmd = [python, str(script), "--model", str(gguf), "--threads", str(threads), "--prompt",
           ",".join(map(str, prompt)), "--new-tokens", str(new_tokens), "--repeats", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print(f"llama.cpp not run ({python}): {result.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="checkpoint_download/smollm2")
    p.add_argument("--gguf", default="smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of the table's rows")
    p.add_argument("--llama-python", default=LLAMA_PYTHON if Path(LLAMA_PYTHON).exists() else None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    folder = Path(args.model_dir)
    gguf = gguf_path(args.gguf)

    models = {name: load_variant(VARIANTS[name], folder, str(gguf)) for name in args.variants.split(",")}
    vocab = next(iter(models.values())).config.vocab_size
    batches = [int(b) for b in args.batch_sizes.split(",")]
    prompts = {
        b: torch.randint(3, vocab, (b, args.prompt_len), generator=torch.Generator().manual_seed(b)).tolist()
        for b in batches
    }

    best: dict[tuple[str, int], dict] = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for batch in batches:
                for name, model in models.items():

                    def run(n, model=model, prompt=prompts[batch]):
                        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                             eos_token_id=2)  # fmt: skip
                        return [o[args.prompt_len :].tolist() for o in out]

                    r = measure(name, run, batch, args.prompt_len, args.new_tokens, 1)
                    if (name, batch) not in best or r["decode_tps"] > best[(name, batch)]["decode_tps"]:
                        best[(name, batch)] = r
            if args.llama_python and 1 in batches:
                r = llama_cpp(args.llama_python, gguf, threads, prompts[1][0], args.new_tokens)
                if r is None:
                    args.llama_python = None
                    continue
                r.update(name=f"llama.cpp {r.pop('version')} (same GGUF)", batch=1, rows=[r.pop("tokens")])
                key = ("llama.cpp", 1)
                if key not in best or r["decode_tps"] > best[key]["decode_tps"]:
                    best[key] = r

    print(f"torch {torch.__version__}, threads {threads}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"greedy, best of {args.rounds} rounds, {gguf.name}")  # fmt: skip
    first = next(iter(models))
    print(f"{'variant':36s} {'batch':>5s} {'decode tok/s':>12s} {'vs fp32':>8s} {'weights MiB':>11s} same tokens")
    for batch in batches:
        ref = best[(first, batch)]
        for (name, b), r in best.items():
            if b != batch:
                continue
            same = sum(a == c for a, c in zip(r["rows"][0], ref["rows"][0]))
            mib = f"{held_mib(models[name]):11.0f}" if name in models else f"{'':11s}"
            print(f"{r['name']:36s} {batch:5d} {r['decode_tps']:12.1f} {r['decode_tps'] / ref['decode_tps']:7.2f}x "
                  f"{mib} {same}/{len(ref['rows'][0])}")  # fmt: skip
    if ("llama.cpp", 1) in best and ("int4 from GGUF Q4_1", 1) in best:
        ours, theirs = best[("int4 from GGUF Q4_1", 1)], best[("llama.cpp", 1)]
        same = sum(a == c for a, c in zip(ours["rows"][0], theirs["rows"][0]))
        print(f"\nint4 from GGUF / llama.cpp decode, batch 1: {ours['decode_tps'] / theirs['decode_tps']:.2f}x "
              f"({ours['decode_tps']:.1f} vs {theirs['decode_tps']:.1f} tok/s); greedy tokens equal: "
              f"{same}/{len(ours['rows'][0])}")  # fmt: skip


if __name__ == "__main__":
    main()
