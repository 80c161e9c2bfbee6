"""Tokenizer encode throughput: our wrappers against the libraries they wrap.

For each pair (LlamaTokenizer / sentencepiece, LlamaTokenizerFast / tokenizers, Llama3Tokenizer /
tiktoken) it measures encode MB/s on one long document (the Wikipedia text asset, 2.1 MB) and on a
batch of short lines (the first N non-empty lines), and prints ours / theirs. Targets: a wrapper costs
at most 10% over its library (ratio >= 0.90); fast batch encoding is at least 3x the slow one.

    PYTHONPATH=. python bench/tokenization.py [--lines 1000] [--repeat 3] [--doc-bytes N]

(Named tokenization.py: a bench/tokenizers.py would shadow the `tokenizers` package for every script here.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_times(ours, theirs, repeat: int) -> tuple[float, float]:
    """Best time of each side, the two alternating so that machine noise hits both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((ours, theirs)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000, help="short texts in the batch (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs per side; the best is kept")
    parser.add_argument("--doc-bytes", type=int, default=0, help="cut the long document to this many bytes (0: all)")
    args = parser.parse_args(argv)

    import sentencepiece as spm
    import tiktoken

    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast
    from torchformers.tools.assets import fetch
    from torchformers.tools.register.register import import_module_from_folder

    text = fetch("text/wiki.utf8").read_text(encoding="utf-8")
    if args.doc_bytes:
        text = text.encode("utf-8")[: args.doc_bytes].decode("utf-8", errors="ignore")
    lines = [line for line in text.split("\n") if line.strip()][: args.lines]
    doc_mb = len(text.encode("utf-8")) / 1e6
    batch_mb = sum(len(line.encode("utf-8")) for line in lines) / 1e6

    llama2 = str(fetch("llama2/tokenizer.model"))
    slow = LlamaTokenizer(llama2)
    fast = LlamaTokenizerFast(vocab_file=llama2)
    sp = spm.SentencePieceProcessor(model_file=llama2)
    backend = fast.backend_tokenizer  # the same tokenizers.Tokenizer, used directly
    module = import_module_from_folder(REPO / "research" / "llama3_1", "llama3_1_tokenizer")
    llama3 = module.Llama3Tokenizer(str(fetch("llama3/tokenizer.model")))
    enc = tiktoken.Encoding(
        name="llama3", pat_str=module.PAT_STR, mergeable_ranks=llama3._ranks, special_tokens=llama3.special_tokens
    )

    cases = [
        (
            "slow  LlamaTokenizer / sentencepiece",
            "doc",
            lambda: slow.encode(text),
            lambda: sp.encode(text, add_bos=True),
        ),
        ("fast  LlamaTokenizerFast / tokenizers", "doc", lambda: fast.encode(text), lambda: backend.encode(text).ids),
        (
            "llama3 Llama3Tokenizer / tiktoken",
            "doc",
            lambda: llama3.encode(text),
            lambda: enc.encode(text, allowed_special="all"),
        ),
        (
            "slow  LlamaTokenizer / sentencepiece",
            "batch",
            lambda: slow(lines)["input_ids"],
            lambda: sp.encode(lines, add_bos=True),
        ),
        (
            "fast  LlamaTokenizerFast / tokenizers",
            "batch",
            lambda: fast(lines)["input_ids"],
            lambda: [e.ids for e in backend.encode_batch(lines)],
        ),
        (
            "llama3 Llama3Tokenizer / tiktoken",
            "batch",
            lambda: llama3(lines)["input_ids"],
            lambda: enc.encode_batch(lines, allowed_special="all"),
        ),
    ]
    print(f"document {doc_mb:.2f} MB; batch of {len(lines)} lines, {batch_mb:.3f} MB; best of {args.repeat}")
    print(f"{'pair':40s} {'input':6s} {'ours MB/s':>10s} {'theirs MB/s':>12s} {'ours/theirs':>12s}")
    results = {}
    for name, kind, ours, theirs in cases:
        ours(), theirs()  # warm up (lazy tables, thread pools)
        t_ours, t_theirs = best_times(ours, theirs, args.repeat)
        size = doc_mb if kind == "doc" else batch_mb
        results[(name.split()[0], kind)] = size / t_ours
        flag = "" if t_theirs / t_ours >= 0.90 else "  (over 10% slower)"
        print(f"{name:40s} {kind:6s} {size / t_ours:10.2f} {size / t_theirs:12.2f} {t_theirs / t_ours:12.2f}{flag}")
    ratio = results[("fast", "batch")] / results[("slow", "batch")]
    print(f"fast batch / slow batch: {ratio:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
