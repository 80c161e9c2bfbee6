"""`preprocess`: raw text (`wiki`) or conversations (`qa`) -> fixed-length samples in Parquet, as MindFormers'
`tools/dataset_preprocess/llama/llama_preprocess.py` (and `research/llama3_1/llama3_1_preprocess.py`).

Every sample is `seq_length + 1` tokens (the model shifts inputs and labels itself). Output is Parquet
instead of MindRecord: fixed-size int32 list columns `input_ids` (and `labels` for qa;
`position_ids`/`segment_ids` when conversations are packed), plus `<output_file>.meta.json` with the
tokenizer, `seq_length`, the files and every count (records read, samples written, truncated, dropped,
tokens lost to the tail remainder).

- `wiki` (`wiki.py`): paragraphs encoded as `<s> ... </s>`, all concatenated (`repeat` times) and cut
  into non-overlapping `seq_length + 1` chunks; the last partial chunk is dropped and counted.
- `wikipedia` (MindFormers' `TrainingDataset` path): Parquet files whose first column is text; each
  non-blank line encoded, the lines of a file concatenated and cut into `seq_length + 1` chunks (a
  chunk is emitted once more tokens follow it; what is left at the end of a file is dropped), each
  chunk's last two tokens replaced by BOS in front and EOS at the end (MindFormers'
  `prepare_for_model` with both added and right truncation); exactly `samples_num` samples, the files
  read again from the first when a pass over them gives fewer.
- `qa` (`chat_formats.py`): each conversation formatted with `chat_format`, checked and encoded, then
  truncated, dropped or refused when too long (`on_long`); `pack` puts several in one sample
  (`packing.py`).

The work runs in the process pool of `worker_pool.py`: each process does all of a chunk's work
(parsing, checking, encoding, label masking, `on_long`) and the forked ones send back only the chunk's
tokens as compact arrays; this process puts the results back in input order and writes them
(`parquet_writer.py`).
"""

from __future__ import annotations

import array
import collections
import dataclasses
import functools
import glob
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from torchformers.dataset.preprocess.chat_formats import (
    CHAT_FORMATS,
    IGNORE_TOKEN_ID,
    conversation_messages,
    encode_conversation,
)
from torchformers.dataset.preprocess.errors import PreprocessError
from torchformers.dataset.preprocess.json_stream import json_items, parse_json_line
from torchformers.dataset.preprocess.packing import Packer
from torchformers.dataset.preprocess.parquet_writer import ParquetSink, meta_path, output_files
from torchformers.dataset.preprocess.tokenizer import encode_text, tokenizer_name
from torchformers.dataset.preprocess.wiki import iter_wiki_chunks, tokenize_wiki_text
from torchformers.dataset.preprocess.worker_pool import map_chunks

__all__ = ["QaOptions", "preprocess"]

logger = logging.getLogger(__name__)

_MAX_DETAILED_WARNINGS = 20  # per kind; the rest are counted only
_QA_COUNTS = (
    "records",
    "samples",
    "truncated",
    "dropped_too_long",
    "records_skipped_bad",
    "label_mismatch_masked",
    "no_label_tokens",
)


@dataclasses.dataclass(frozen=True)
class QaOptions:
    """How conversations become samples (the `qa` options of `preprocess`)."""

    length: int  # tokens per sample: seq_length + 1
    chat_format: str = "vicuna"
    pack: bool = False
    on_long: str = "truncate"  # truncate, drop or error
    on_error: str = "raise"  # raise or skip
    chunk_records: int = 64  # records per unit of work


@dataclasses.dataclass
class _Run:
    """What the wiki and qa runs share: the inputs, the tokenizer, the pool and where the rows go."""

    inputs: list[Path]
    tokenizer: Any
    num_workers: int
    sink: ParquetSink
    bar: Any  # a tqdm progress bar, or None
    exiting: list  # worker processes to join once the output is in place


def _expand_inputs(input_glob: str | list[str]) -> list[Path]:
    patterns = [input_glob] if isinstance(input_glob, (str, os.PathLike)) else list(input_glob)
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(pattern), recursive=True))
        if not matched:
            raise PreprocessError(f"--input_glob {pattern!r} matches no file")
        files += [Path(m) for m in matched if Path(m).is_file()]
    if not files:
        raise PreprocessError(f"--input_glob {input_glob!r} matches only folders")
    return files


class _Warnings:
    """Logs the first few warnings of each kind in full and counts them all."""

    def __init__(self):
        self.seen = collections.Counter()

    def __call__(self, kind: str, message: str) -> None:
        self.seen[kind] += 1
        if self.seen[kind] <= _MAX_DETAILED_WARNINGS:
            logger.warning(message)
        elif self.seen[kind] == _MAX_DETAILED_WARNINGS + 1:
            logger.warning(f"more '{kind}' warnings follow; only their count is reported")


def preprocess(
    dataset_type: str,
    input_glob: str | list[str],
    output_file: str | os.PathLike,
    tokenizer_factory: Callable[[], Any],
    seq_length: int = 2048,
    *,
    pad_token_id: int | None = None,
    chat_format: str = "vicuna",
    pack: bool = False,
    repeat: int = 1,
    file_partition: int = 1,
    num_workers: int | None = None,
    on_long: str = "truncate",
    on_error: str = "raise",
    overwrite: bool = False,
    chunk_records: int = 64,
    rows_per_group: int | None = None,
    progress: bool = True,
    samples_num: int = 10000,
) -> dict:
    """Tokenize the inputs into Parquet; returns the metadata written next to the output.

    `tokenizer_factory` is a callable returning the tokenizer, called once here (forked workers inherit it).
    `samples_num` is the number of samples of the `wikipedia` type (MindFormers' default, 10000).
    """
    if dataset_type not in ("wiki", "wikipedia", "qa"):
        raise PreprocessError(f"--dataset_type {dataset_type!r}: expected 'wiki', 'wikipedia' or 'qa'")
    if dataset_type == "wikipedia" and samples_num < 1:
        raise PreprocessError(f"--samples_num must be positive, got {samples_num}")
    if seq_length < 1:
        raise PreprocessError(f"--seq_length must be positive, got {seq_length}")
    if file_partition < 1 or repeat < 1:
        raise PreprocessError(f"--file_partition and --repeat must be >= 1, got {file_partition} and {repeat}")
    if on_long not in ("truncate", "drop", "error"):
        raise PreprocessError(f"--on_long {on_long!r}: expected truncate, drop or error")
    if chat_format not in CHAT_FORMATS:
        raise PreprocessError(f"--chat_format {chat_format!r}: expected one of {CHAT_FORMATS}")
    inputs = _wikipedia_inputs(input_glob) if dataset_type == "wikipedia" else _expand_inputs(input_glob)
    for path in inputs:
        if path.stat().st_size == 0:
            raise PreprocessError(f"{path}: the file is empty")
    files = output_files(output_file, file_partition)
    existing = [str(p) for p in [*files, meta_path(output_file)] if p.exists()]
    if existing and not overwrite:
        raise PreprocessError(f"--output_file: {', '.join(existing)} already exist(s); pass --overwrite to replace")
    for p in files:
        p.parent.mkdir(parents=True, exist_ok=True)
    num_workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    tokenizer = tokenizer_factory()
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
        pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
    length = seq_length + 1
    if dataset_type in ("wiki", "wikipedia"):
        columns = ["input_ids"]
    else:
        columns = ["input_ids", "labels", *(["position_ids", "segment_ids"] if pack else [])]
    meta = {
        "format": "torchformers.tokenized/1",
        "dataset_type": dataset_type,
        "seq_length": seq_length,
        "sample_length": length,
        "columns": columns,
        "tokenizer": tokenizer_name(tokenizer),
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        "pad_token_id": pad_token_id,
        "ignore_token_id": IGNORE_TOKEN_ID,
        "chat_format": chat_format if dataset_type == "qa" else None,
        "packed": bool(pack) if dataset_type == "qa" else True,
        "repeat": repeat,
        "inputs": [str(p) for p in inputs],
        "files": [p.name for p in files],
    }
    if rows_per_group is None:  # about 4 MB of tokens per row group: cheap random access, good compression
        rows_per_group = max(16, (4 << 20) // (4 * length * len(columns)))
    pad_values = {"input_ids": pad_token_id, "labels": IGNORE_TOKEN_ID, "position_ids": 0, "segment_ids": 0}
    schema_meta = {k: meta[k] for k in meta if k != "inputs"}
    sink = ParquetSink(files, columns, length, schema_meta, rows_per_group, pad_values)
    total = sum(p.stat().st_size for p in inputs) * repeat if dataset_type == "wiki" else None
    bar = _progress_bar(progress, total, {"wiki": "B", "wikipedia": "line"}.get(dataset_type, "rec"))
    run = _Run(inputs, tokenizer, num_workers, sink, bar, exiting=[])
    started = time.perf_counter()
    try:
        if dataset_type == "wiki":
            counts = _run_wiki(run, length=length, repeat=repeat)
        elif dataset_type == "wikipedia":
            meta["samples_num"] = samples_num
            counts = _run_wikipedia(run, length=length, samples_num=samples_num)
        else:
            options = QaOptions(length, chat_format, pack, on_long, on_error, chunk_records)
            counts = _run_qa(run, options)
        meta["counts"] = counts
        meta["seconds"] = round(time.perf_counter() - started, 3)
        sink.commit(meta, meta_path(output_file))
    except BaseException:
        sink.abort()
        raise
    finally:
        for worker in run.exiting:
            worker.join()
        if bar is not None:
            bar.close()
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    logger.info(f"wrote {sink.rows} samples of {length} tokens to {', '.join(map(str, files))} ({summary})")
    return meta


def _progress_bar(enabled: bool, total: int | None, unit: str) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(total=total, unit=unit, unit_scale=True, desc="tokenizing", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# wiki
# --------------------------------------------------------------------------------------------------


def _wiki_task(tokenizer: Any, text: str) -> tuple[np.ndarray, dict[str, int], int]:
    ids, counts = tokenize_wiki_text(tokenizer, text)
    return np.asarray(ids, dtype=np.int32), counts, len(text)


def _run_wiki(run: _Run, *, length: int, repeat: int) -> dict:
    counts = collections.Counter()
    carry = np.zeros(0, dtype=np.int32)
    sink, bar = run.sink, run.bar

    def texts():
        for _ in range(repeat):
            for path in run.inputs:
                yield from iter_wiki_chunks(path)

    task = functools.partial(_wiki_task, run.tokenizer)
    for ids, chunk_counts, n_chars in map_chunks(task, texts, num_workers=run.num_workers, exiting=run.exiting):
        if bar is not None:
            bar.update(n_chars)  # characters read: close to bytes for mostly-ASCII text
        counts.update(chunk_counts)
        counts["tokens"] += len(ids)
        stream = np.concatenate([carry, ids])
        n = len(stream) // length
        sink.add({"input_ids": stream[: n * length]}, np.full(n, length))
        carry = stream[n * length :]
        if bar is not None:
            bar.set_postfix(samples=sink.rows, refresh=False)
            bar.update(0)
    out = {
        "paragraphs": counts["paragraphs"],
        "headings_dropped": counts["headings_dropped"],
        "tokens": counts["tokens"],
        "samples": sink.rows,
        "tokens_written": sink.rows * length,
        "tail_tokens_dropped": len(carry),
    }
    if out["tail_tokens_dropped"]:
        logger.info(f"the last {len(carry)} tokens do not fill a sample of {length} and are dropped (counted)")
    return out


# --------------------------------------------------------------------------------------------------
# wikipedia
# --------------------------------------------------------------------------------------------------

_WIKIPEDIA_LINES_PER_CHUNK = 256


def _wikipedia_inputs(input_glob: str | list[str]) -> list[Path]:
    """As MindFormers' `TrainingDataset`: a folder means its files whose names end in "parquet", sorted."""
    patterns = [input_glob] if isinstance(input_glob, (str, os.PathLike)) else list(input_glob)
    files: list[Path] = []
    for pattern in patterns:
        if Path(pattern).is_dir():
            found = sorted(p for p in Path(pattern).iterdir() if p.name.endswith("parquet") and p.is_file())
            if not found:
                raise PreprocessError(f"--input_glob {pattern}: the folder holds no *parquet file")
            files += found
        else:
            files += _expand_inputs(pattern)
    return files


def _wikipedia_lines(path: Path):
    """The non-blank lines of the first column's texts, stripped (MindFormers' `_read_dataset`)."""
    import pyarrow.parquet as pq  # start-up time: loaded only for this input type

    try:
        column = pq.read_table(path).column(0)
    except Exception as err:  # pyarrow's errors for a file that is not Parquet
        raise PreprocessError(f"{path}: not a readable Parquet file ({err})") from None
    for text in column.to_pylist():
        for line in (text or "").strip().split("\n"):
            if line.strip():
                yield line.strip()


def _wikipedia_task(tokenizer: Any, chunk: tuple[int, bool, bool, list[str]]):
    file_index, first, last, lines = chunk
    ids = [encode_text(tokenizer, line) for line in lines]
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32)
    return file_index, first, last, flat, np.array([len(i) for i in ids], dtype=np.int64)


def _run_wikipedia(run: _Run, *, length: int, samples_num: int) -> dict:
    sink, tokenizer = run.sink, run.tokenizer
    bos, eos = np.int32(tokenizer.bos_token_id), np.int32(tokenizer.eos_token_id)

    def chunks():  # every file's lines, the files again and again: the consumer stops at samples_num
        while True:
            for k, path in enumerate(run.inputs):
                batch, first = [], True
                for line in _wikipedia_lines(path):
                    batch.append(line)
                    if len(batch) == _WIKIPEDIA_LINES_PER_CHUNK:
                        yield k, first, False, batch
                        batch, first = [], False
                yield k, first, True, batch

    counts = collections.Counter()
    carry = np.zeros(0, dtype=np.int32)
    pass_samples = 0
    results = map_chunks(functools.partial(_wikipedia_task, tokenizer), chunks, num_workers=run.num_workers)
    try:
        for file_index, first, last, flat, lengths in results:
            if first:
                carry = np.zeros(0, dtype=np.int32)
                if file_index == 0:
                    counts["passes"] += 1
                    pass_samples = 0
            start = 0
            for n in lengths.tolist():  # MindFormers' pad_func, line by line
                carry = np.concatenate([carry, flat[start : start + n]])
                start += n
                if len(carry) >= length:
                    emit = -(-(len(carry) - length) // length)  # chunks with more tokens after them
                    for j in range(min(emit, samples_num - sink.rows)):
                        chunk = carry[j * length : (j + 1) * length]
                        sink.add({"input_ids": np.concatenate([[bos], chunk[:-2], [eos]])}, np.array([length]))
                    pass_samples += emit
                    carry = carry[max(emit, 1) * length :]  # an exactly full buffer is dropped, as MindFormers
                if sink.rows >= samples_num:
                    return {"samples": sink.rows, "passes": counts["passes"]}
            if last and file_index == len(run.inputs) - 1 and pass_samples == 0:
                raise PreprocessError(
                    f"{', '.join(map(str, run.inputs))} give no sample of {length} tokens "
                    f"(MindFormers would read them forever)"
                )
            if run.bar is not None:
                run.bar.set_postfix(samples=sink.rows, refresh=False)
                run.bar.update(len(lengths))
    finally:
        results.close()  # stops the worker processes still tokenizing
    raise AssertionError("unreachable: the chunks repeat until samples_num samples")


# --------------------------------------------------------------------------------------------------
# qa
# --------------------------------------------------------------------------------------------------


def _qa_task(
    tokenizer: Any, options: QaOptions, chunk: tuple[str, bool, list[tuple[int, Any]]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], list[tuple[str, str]]]:
    """All the per-record work on a chunk of one file, in the worker: parse (JSON lines), check, encode,
    mask the labels of a mismatched conversation, apply `on_long`.

    `chunk` is `(file, raw, [(line, record or line text when raw)])`. Returns `(ids, labels, lengths,
    counts, warnings)`: the kept conversations' tokens end to end as an int32 array and their lengths
    (compact to send back: padding is added where the rows are written), the labels as a boolean
    mask of the labelled positions (labels are `ids` there and -100 elsewhere; int32 labels if not),
    the counts, and the `(kind, message)` warnings in input order.
    """
    source, raw, items = chunk
    ids_out, labels_out = array.array("i"), array.array("i")  # C ints, converted once from each list
    lengths: list[int] = []
    warnings: list[tuple[str, str]] = []
    counts = collections.Counter()
    chat_format, on_error, on_long, length = options.chat_format, options.on_error, options.on_long, options.length
    for line, item in items:
        record = parse_json_line(source, line, item) if raw else item  # malformed JSON always stops the run
        try:
            messages = conversation_messages(record, f"{source}:{line}")
            ids, labels, mismatch = encode_conversation(tokenizer, messages, chat_format)
        except PreprocessError as err:
            if on_error == "raise":
                raise
            counts["records_skipped_bad"] += 1
            warnings.append(("bad", str(err)))
            continue
        if mismatch:
            counts["label_mismatch_masked"] += 1
            warnings.append(
                ("mismatch", f"{source}:{line}: tokenization mismatch between rounds and the whole; labels all -100")
            )
            labels = [IGNORE_TOKEN_ID] * len(labels)
        if len(ids) > length:
            message = f"{source}:{line}: the conversation has {len(ids)} tokens, more than seq_length + 1 = {length}"
            if on_long == "error":
                raise PreprocessError(message + " (--on_long error)")
            if on_long == "drop":
                counts["dropped_too_long"] += 1
                warnings.append(("long", message + "; dropped"))
                continue
            counts["truncated"] += 1
            warnings.append(("long", message + "; truncated"))
            ids, labels = ids[:length], labels[:length]
        ids_out.fromlist(ids)
        labels_out.fromlist(labels)
        lengths.append(len(ids))
    counts["records"] = len(lengths) + counts["dropped_too_long"]
    ids_arr, labels_arr = (np.frombuffer(a, dtype=np.intc).astype(np.int32, copy=False) for a in (ids_out, labels_out))
    lengths_arr = np.array(lengths, dtype=np.int32)
    labelled = labels_arr != IGNORE_TOKEN_ID
    labelled_before = np.concatenate([[0], np.cumsum(labelled)])[np.cumsum(lengths_arr)]  # per conversation end
    counts["no_label_tokens"] = int(np.count_nonzero(np.diff(labelled_before, prepend=0) == 0))
    if np.array_equal(labels_arr[labelled], ids_arr[labelled]):
        labels_arr = labelled  # a byte per token instead of four: results pass through one shared pipe
    return ids_arr, labels_arr, lengths_arr, {k: v for k, v in counts.items() if v}, warnings


def _run_qa(run: _Run, options: QaOptions) -> dict:
    counts = collections.Counter()
    warn = _Warnings()
    sink, bar = run.sink, run.bar

    def chunks():
        for path in run.inputs:
            raw, items = json_items(path)
            while batch := list(itertools.islice(items, options.chunk_records)):
                yield str(path), raw, batch

    task = functools.partial(_qa_task, run.tokenizer, options)
    packer = Packer(options.length, sink) if options.pack else None
    for ids, labels, lengths, chunk_counts, warnings in map_chunks(
        task, chunks, num_workers=run.num_workers, exiting=run.exiting
    ):
        if labels.dtype == bool:
            labels = np.where(labels, ids, np.int32(IGNORE_TOKEN_ID))
        counts.update(chunk_counts)
        for kind, message in warnings:
            warn(kind, message)
        if packer is not None:
            packer.add(ids, labels, lengths)
        else:
            sink.add({"input_ids": ids, "labels": labels}, lengths)
        if bar is not None:
            bar.set_postfix(samples=sink.rows, refresh=False)
            bar.update(chunk_counts.get("records", 0) + chunk_counts.get("records_skipped_bad", 0))
    if packer is not None:
        packer.flush()
    counts["samples"] = sink.rows
    if counts["records"] == 0:
        raise PreprocessError(f"no conversation found in {', '.join(map(str, run.inputs))}")
    return {k: int(counts[k]) for k in _QA_COUNTS}
