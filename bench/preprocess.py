"""Preprocessing throughput: records/s of `llama_preprocess` (qa) with N workers against a plain loop.

The plain loop is the straightforward single-process program doing the same work: load the
conversation JSON, turn each record into messages and encode it with the same `encode_conversation`,
mask the labels of a mismatched record, truncate and pad to `seq_length + 1`, and write the rows to
Parquet with the same writer options, one row group at a time. Its rows are checked equal to the
tool's output.

Both run in one process with the same tokenizer, loaded once, in alternating rounds (plain, tool with
1 worker, tool with N workers, N plain loops side by side, again ...; `llama_preprocess` with N
workers is N processes: this one and N - 1 forked), and the best round of each is reported, with its CPU seconds
(this process plus its children). Peak memory (Pss of this process plus its worker processes,
sampled every 25 ms) is taken in one more, untimed run of each.

`side_by_side` runs N independent copies of the plain loop at once, each on the whole input (N times
the records): no communication, no serial part, so `side_by_side_speedup` is the most N workers can
gain on this machine as it is (cores, caches, memory bandwidth and other load included).
`cpu_bound_speedup` is what N free cores would give at the measured CPU costs: plain-loop CPU
seconds over the larger of the main process's CPU seconds and the pool run's total split N ways.
On a machine shared with other work the wall-clock ratios follow the other load; these two do not
(as much).

    PYTHONPATH=. python bench/preprocess.py --model_file tokenizer.model --copies 100 --workers 2

Without --model_file, the `llama2/tokenizer.model` asset is used (fetched if needed). Input is
the Alpaca sample shipped with the tests (tests/assets/alpaca_tiny.json), repeated --copies times.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchformers.dataset.preprocess import (
    IGNORE_TOKEN_ID,
    SentencePieceTokenizer,
    alpaca_to_conversations,
    conversation_messages,
    encode_conversation,
    parquet_writer,
    preprocess,
)
from torchformers.tools.assets import fetch

ALPACA = Path(__file__).resolve().parents[1] / "tests" / "assets" / "alpaca_tiny.json"
ROWS_PER_GROUP = 512


def plain_loop(path: Path, out: Path, tokenizer, seq_length: int) -> int:
    """Single process: parse, encode, mask, truncate, pad, write Parquet."""
    length = seq_length + 1
    field = pa.list_(pa.int32(), length)
    schema = pa.schema([pa.field("input_ids", field), pa.field("labels", field)])
    ids_block = np.empty((ROWS_PER_GROUP, length), np.int32)
    labels_block = np.empty((ROWS_PER_GROUP, length), np.int32)
    rows = filled = 0

    def write(n: int) -> None:
        columns = [
            pa.FixedSizeListArray.from_arrays(pa.array(b[:n].ravel()), length) for b in (ids_block, labels_block)
        ]
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))

    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    with parquet_writer(out, schema) as writer:
        for i, record in enumerate(records):
            ids, labels, mismatch = encode_conversation(tokenizer, conversation_messages(record, f"{path}:{i}"))
            if mismatch:
                labels = [IGNORE_TOKEN_ID] * len(labels)
            n = min(len(ids), length)
            if filled == 0:
                ids_block.fill(tokenizer.pad_token_id)
                labels_block.fill(IGNORE_TOKEN_ID)
            ids_block[filled, :n] = ids[:n]
            labels_block[filled, :n] = labels[:n]
            filled += 1
            rows += 1
            if filled == ROWS_PER_GROUP:
                write(filled)
                filled = 0
        if filled:
            write(filled)
    return rows


class PeakMemory:
    """Peak proportional set size (Pss: shared pages split between the processes sharing them) of this
    process plus its children, sampled in a thread."""

    def __init__(self, interval: float = 0.025):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        pids = ["self"]
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += (task / "children").read_text().split()
            except OSError:
                pass
        total = 0
        for pid in pids:
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:  # a worker that just exited
                continue
            for line in rollup.splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def read_rows(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {c: table.column(c).combine_chunks().flatten().to_numpy() for c in ("input_ids", "labels")}


def side_by_side(copies: int, path: Path, out: Path, tokenizer, seq_length: int) -> int:
    """`copies` plain loops at once in forked processes; the records they wrote together."""
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=plain_loop, args=(path, out.with_name(f"{out.name}.{i}"), tokenizer, seq_length))
        for i in range(copies)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs), "a side-by-side plain loop failed"
    return sum(pq.ParquetFile(out.with_name(f"{out.name}.{i}")).metadata.num_rows for i in range(copies))


def _same(tokenizer):
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_file", type=str, default=None)
    parser.add_argument("--copies", type=int, default=100, help="how many times the 100 Alpaca records repeat")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq_length", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best of each is reported")
    args = parser.parse_args(argv)
    model_file = args.model_file
    if model_file is None:
        model_file = str(fetch("llama2/tokenizer.model"))
    tokenizer = SentencePieceTokenizer(model_file)
    factory = functools.partial(_same, tokenizer)  # both sides use the tokenizer loaded here
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conv = alpaca_to_conversations(json.loads(ALPACA.read_text(encoding="utf-8")))
        data = tmp / "conv.json"
        data.write_text(json.dumps(conv * args.copies), encoding="utf-8")
        n = len(conv) * args.copies

        def tool(workers: int) -> Callable[[Path], int]:
            def run(out: Path) -> int:
                meta = preprocess(
                    "qa", str(data), out, factory, args.seq_length, num_workers=workers, progress=False, overwrite=True
                )
                return meta["counts"]["records"]

            return run

        variants = {"plain_loop": lambda out: plain_loop(data, out, tokenizer, args.seq_length)}
        for workers in sorted({1, args.workers}):
            variants[f"workers_{workers}"] = tool(workers)
        if args.workers > 1:
            variants["side_by_side"] = lambda out: side_by_side(args.workers, data, out, tokenizer, args.seq_length)
        expected = {name: n * (args.workers if name == "side_by_side" else 1) for name in variants}
        best = dict.fromkeys(variants, float("inf"))
        cpu = dict.fromkeys(variants, float("inf"))
        main_cpu = dict.fromkeys(variants, float("inf"))
        peak = dict.fromkeys(variants, 0)
        for _ in range(args.rounds):
            for name, run in variants.items():
                before, start = os.times(), time.perf_counter()
                assert run(tmp / f"{name}.parquet") == expected[name]
                seconds, after = time.perf_counter() - start, os.times()
                best[name] = min(best[name], seconds)
                cpu[name] = min(cpu[name], sum(after[:4]) - sum(before[:4]))  # user + system, self + children
                main_cpu[name] = min(main_cpu[name], sum(after[:2]) - sum(before[:2]))
        for name, run in variants.items():  # apart: reading smaps costs CPU that would skew the timings
            with PeakMemory() as memory:
                run(tmp / f"{name}.parquet")
            peak[name] = memory.peak
        reference = read_rows(tmp / "plain_loop.parquet")
        for name in variants:
            if name == "side_by_side":
                continue
            rows = read_rows(tmp / f"{name}.parquet")
            assert all(np.array_equal(reference[c], rows[c]) for c in reference), f"{name} rows differ"
    results = {
        "records": n,
        "cpu_count": os.cpu_count(),
        "seq_length": args.seq_length,
        "rounds": args.rounds,
        **{f"{name}_records_per_s": round(expected[name] / best[name], 1) for name in variants},
        **{f"{name}_cpu_s": round(cpu[name], 2) for name in variants},
        f"workers_{args.workers}_main_process_cpu_s": round(main_cpu[f"workers_{args.workers}"], 2),
        # what N free cores would give at these CPU costs: the serial main process or the total split N ways
        "cpu_bound_speedup": round(
            cpu["plain_loop"] / max(main_cpu[f"workers_{args.workers}"], cpu[f"workers_{args.workers}"] / args.workers),
            2,
        ),
        **{f"{name}_peak_pss_mb": round(peak[name] / 2**20, 1) for name in variants},
        "speedup_vs_plain": round(best["plain_loop"] / best[f"workers_{args.workers}"], 2),
        **(
            {"side_by_side_speedup": round(args.workers * best["plain_loop"] / best["side_by_side"], 2)}
            if args.workers > 1
            else {}
        ),
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
