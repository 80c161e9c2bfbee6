"""llama.cpp's greedy decode speed on a GGUF file, measured as `bench/generate.py` measures ours.

Run by `bench/quantized.py` with the interpreter that has `llama-cpp-python` (its own virtual
environment: see docs/performance_tuning.md); it needs nothing else. Times prefill + 1 token and
prefill + N tokens (greedy, the KV cache cleared before each run, best of `--repeats`);
decode tokens/s = (N - 1) / (t_N - t_1). Prints one JSON object: decode_tps, prefill_ms, tokens.

    /work/llamaenv/bin/python bench/llama_cpp_decode.py --model F.gguf --threads 1 --prompt 5,17,9 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--prompt", required=True, help="comma-separated token ids")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import llama_cpp

    prompt = [int(t) for t in args.prompt.split(",")]
    llm = llama_cpp.Llama(
        model_path=args.model, n_ctx=len(prompt) + args.new_tokens + 8, n_batch=512, n_threads=args.threads,
        n_threads_batch=args.threads, verbose=False,
    )  # fmt: skip

    def run(n: int) -> list[int]:
        llm.reset()  # no prefix reuse: every run evaluates the whole prompt
        out = []
        for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == n:
                break
        return out

    def timed(n: int) -> tuple[float, list[int]]:
        start = time.perf_counter()
        out = run(n)
        return time.perf_counter() - start, out

    run(2)  # warm-up
    t1 = min(timed(1)[0] for _ in range(args.repeats))
    tn, tokens = min(timed(args.new_tokens) for _ in range(args.repeats))
    print(json.dumps({
        "decode_tps": (args.new_tokens - 1) / max(tn - t1, 1e-9),
        "prefill_ms": t1 * 1000,
        "tokens": tokens,
        "version": llama_cpp.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
