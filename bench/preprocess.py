"""Preprocessing throughput: records/s of `llama_preprocess` (qa) with N workers against a plain loop.

The plain loop is what a single-process script does: read the conversation JSON, encode each record
with the same `encode_conversation`, pad, keep the rows in memory. The pool run writes Parquet.

    PYTHONPATH=. python bench/preprocess.py --model_file tokenizer.model --copies 40 --workers 2

Without --model_file, the `llama2/tokenizer.model` asset is used (fetched if needed). Input is
the Alpaca sample shipped with the tests (tests/assets/alpaca_tiny.json), repeated --copies times.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from torchformers.tools.dataset_preprocess.llama import alpaca_converter
from torchformers.tools.dataset_preprocess.llama.llama_preprocess import (
    IGNORE_TOKEN_ID,
    SentencePieceTokenizer,
    _conversation_messages,
    encode_conversation,
    iter_json_records,
    preprocess,
)

ALPACA = Path(__file__).resolve().parents[1] / "tests" / "assets" / "alpaca_tiny.json"


def plain_loop(path: Path, tokenizer, seq_length: int) -> int:
    rows = []
    for line, record in iter_json_records(path):
        ids, labels, _ = encode_conversation(tokenizer, _conversation_messages(record, f"{path}:{line}"))
        ids, labels = ids[: seq_length + 1], labels[: seq_length + 1]
        pad = seq_length + 1 - len(ids)
        rows.append((np.asarray(ids + [0] * pad, np.int32), np.asarray(labels + [IGNORE_TOKEN_ID] * pad, np.int32)))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_file", type=str, default=None)
    parser.add_argument("--copies", type=int, default=40, help="how many times the 100 Alpaca records repeat")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq_length", type=int, default=1024)
    args = parser.parse_args(argv)
    model_file = args.model_file
    if model_file is None:
        from torchformers.tools.assets import fetch

        model_file = str(fetch("llama2/tokenizer.model"))
    factory = functools.partial(SentencePieceTokenizer, model_file)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conv = alpaca_converter.alpaca_to_conversations(json.loads(ALPACA.read_text(encoding="utf-8")))
        data = tmp / "conv.json"
        data.write_text(json.dumps(conv * args.copies), encoding="utf-8")
        n = len(conv) * args.copies
        results = {"records": n, "cpu_count": os.cpu_count(), "seq_length": args.seq_length}
        tokenizer = factory()
        start = time.perf_counter()
        assert plain_loop(data, tokenizer, args.seq_length) == n
        results["plain_loop_records_per_s"] = round(n / (time.perf_counter() - start), 1)
        for workers in sorted({1, args.workers}):
            start = time.perf_counter()
            meta = preprocess(
                "qa",
                str(data),
                tmp / f"out{workers}.parquet",
                factory,
                args.seq_length,
                num_workers=workers,
                progress=False,
            )
            assert meta["counts"]["records"] == n
            results[f"pool_{workers}_records_per_s"] = round(n / (time.perf_counter() - start), 1)
        results["speedup_vs_plain"] = round(
            results[f"pool_{args.workers}_records_per_s"] / results["plain_loop_records_per_s"], 2
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
