"""Tokenize raw text (`wiki`) or conversations (`qa`) into fixed-length samples, as MindFormers'
`tools/dataset_preprocess/llama/llama_preprocess.py` (and `research/llama3_1/llama3_1_preprocess.py`).

The command line over `torchformers.dataset.preprocess` (the machinery: `runner.preprocess`, the chat
formats, the process pool, the Parquet writer); this file parses the arguments, builds the tokenizer
they name (`--register_path` for external tokenizer classes) and prints one line per error.

Every sample is `seq_length + 1` tokens (the model shifts inputs and labels itself). Output is Parquet
(pyarrow) instead of MindRecord: fixed-size int32 list columns `input_ids` (and `labels` for qa;
`position_ids`/`segment_ids` when conversations are packed), plus `<output_file>.meta.json` with the
tokenizer, `seq_length`, the files and every count (records read, samples written, truncated, dropped,
tokens lost to the tail remainder).

- `wiki`: MindFormers' `clean_wikitext`, split on blank lines, headings (paragraphs starting with "=")
  dropped, each paragraph encoded as `<s> ... </s>`, all concatenated (`--repeat` times) and cut into
  non-overlapping `seq_length + 1` chunks; the last partial chunk is dropped and counted.
  Input is cleaned chunk by chunk, so files larger than memory work, each chunk cut between two
  paragraphs where no bracket or quote pair of the cleaning regexes spans the cut: the result is
  exactly MindFormers' `clean_wikitext` of the whole file.
- `wikipedia`: MindFormers' Parquet path (`TrainingDataset`): the first column's text, line by line,
  cut into `seq_length + 1` samples that begin with BOS and end with EOS, exactly `--samples_num` of
  them (the files are read again from the first when they hold fewer).
- `qa`: conversation JSON (`alpaca_converter` output, ShareGPT `conversations` of `from`/`value`, or
  `messages` of `role`/`content`; a JSON list or JSON lines), formatted with `--chat_format`:
  `vicuna` (MindFormers: vicuna_v1.1 template, split into rounds on "</s>", each round `<s> round </s>`
  with the `<s>` dropped; labels are -100 on the BOS, each round's instruction part and the padding),
  `llama2` (Meta's `[INST]` format), `llama3` (Meta's header/`<|eot_id|>` format), or `template` (the
  tokenizer's `apply_chat_template`). Labels equal `input_ids` on the assistant's tokens (and the
  end-of-turn token that closes them) and are -100 elsewhere. `--pack` puts several conversations in
  one sample, with `position_ids` restarting and `segment_ids` (1, 2, ...; 0 = padding) per conversation.

Work is spread over `--num_workers` processes (default: all cores): the main process and N - 1
forked ones. The input is cut into chunks (`chunk_records` records, or runs of whole paragraphs);
each process reads the input itself, claims the next unclaimed chunk from a shared counter and does
all its work (parsing, checking, encoding, label masking, `--on_long`); the forked ones send back
only the chunk's tokens as compact arrays. The main process also puts the results back in input
order, copies rows into pre-padded row-group blocks and writes them (zstd level 1, no dictionary, no
statistics), claiming fewer chunks for it. Output is written under a temporary name and moved into
place only when complete.

    python -m torchformers.tools.dataset_preprocess.llama.llama_preprocess --dataset_type qa \
        --input_glob alpaca-data-conversation.json --model_file tokenizer.model \
        --seq_length 2048 --output_file alpaca-fastchat2048.parquet
    # Llama 3 with an external tokenizer class:
    ... --tokenizer_type Llama3Tokenizer --register_path research/llama3_1 --model_file tokenizer.model \
        --chat_format llama3
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

from torchformers.dataset.preprocess import (
    CHAT_FORMATS,
    IGNORE_TOKEN_ID,
    PARQUET_OPTIONS,
    PreprocessError,
    SentencePieceTokenizer,
    clean_wikitext,
    encode_conversation,
    encode_text,
    iter_json_records,
    iter_wiki_chunks,
    load_tokenizer,
    meta_path,
    output_files,
    parquet_writer,
    preprocess,
    tokenize_wiki_text,
)
from torchformers.errors import run_cli

__all__ = [
    "CHAT_FORMATS",
    "IGNORE_TOKEN_ID",
    "PARQUET_OPTIONS",
    "PreprocessError",
    "TOKENIZERS",
    "SentencePieceTokenizer",
    "build_parser",
    "clean_wikitext",
    "encode_conversation",
    "encode_text",
    "iter_json_records",
    "iter_wiki_chunks",
    "load_tokenizer",
    "main",
    "meta_path",
    "output_files",
    "parquet_writer",
    "preprocess",
    "tokenize_wiki_text",
]


# MindFormers' --tokenizer values: the tokenizer class and where it lives (llama3: the research folder whose
# llama3_1_preprocess.py takes it)
TOKENIZERS = {"llama": ("LlamaTokenizer", None), "llama3": ("Llama3Tokenizer", "research/llama3_1")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tokenize wiki text or conversations into seq_length+1 samples (Parquet)."
    )
    parser.add_argument("--dataset_type", type=str, default="wiki", choices=["wiki", "wikipedia", "qa"])
    parser.add_argument("--input_glob", type=str, required=True, help="input file(s), a glob pattern")
    parser.add_argument("--output_file", type=str, required=True, help="output Parquet file")
    parser.add_argument(
        "--tokenizer",
        type=str,
        default=None,
        choices=sorted(TOKENIZERS),
        help="MindFormers' tokenizer choice: llama (LlamaTokenizer, the default) or llama3 (Llama3Tokenizer of "
        "research/llama3_1, as its llama3_1_preprocess.py); --model_file is its vocabulary",
    )
    parser.add_argument("--model_file", type=str, default=None, help="tokenizer model (SentencePiece / tiktoken)")
    parser.add_argument(
        "--tokenizer_type",
        type=str,
        default=None,
        help="registered TOKENIZER class (e.g. LlamaTokenizer, Llama3Tokenizer) or module.Class",
    )
    parser.add_argument("--tokenizer_file", type=str, default=None, help="tokenizer.json for fast tokenizers")
    parser.add_argument(
        "--register_path",
        type=str,
        default=None,
        help="folder of external tokenizer code (current directory first, then the repository root)",
    )
    parser.add_argument("--file_partition", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seq_length", type=int, default=2048)
    parser.add_argument(
        "--samples_num",
        type=int,
        default=None,
        help="wikipedia: the number of samples written (default 10000, as MindFormers; the files are read again "
        "when they hold fewer); as in MindFormers, no effect on wiki and qa (every sample is written)",
    )
    parser.add_argument("--pad_token_id", type=int, default=None, help="default: the tokenizer's pad id, else 0")
    parser.add_argument("--chat_format", type=str, default="vicuna", choices=list(CHAT_FORMATS))
    parser.add_argument("--pack", action="store_true", help="qa: pack several conversations per sample")
    parser.add_argument("--num_workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument(
        "--on_long",
        type=str,
        default="truncate",
        choices=["truncate", "drop", "error"],
        help="qa: what to do with a conversation longer than seq_length + 1 (counted either way)",
    )
    parser.add_argument(
        "--on_error",
        type=str,
        default="raise",
        choices=["raise", "skip"],
        help="qa: stop at a malformed record, or skip it (counted and logged)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def _tokenizer_choice(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """`(tokenizer_type, register_path)` from `--tokenizer` (MindFormers' flag) and `--tokenizer_type`."""
    if args.tokenizer is None:
        return args.tokenizer_type, args.register_path
    name, folder = TOKENIZERS[args.tokenizer]
    if args.tokenizer_type is not None and args.tokenizer_type != name:
        raise PreprocessError(
            f"--tokenizer {args.tokenizer} means --tokenizer_type {name}, but --tokenizer_type {args.tokenizer_type} "
            "was given; pass one of them"
        )
    if args.tokenizer_type is None and name == "LlamaTokenizer":
        return None, args.register_path  # the --model_file SentencePiece path, as without --tokenizer
    return name, args.register_path or folder


def _preprocess(args: argparse.Namespace) -> int:
    tokenizer_type, register_path = _tokenizer_choice(args)
    if args.samples_num is not None and args.dataset_type != "wikipedia":
        logging.getLogger(__name__).info(
            f"--samples_num {args.samples_num} has no effect on --dataset_type {args.dataset_type}: in MindFormers it "
            f"only sizes the 'wikipedia' dataset type; every {args.dataset_type} sample is written"
        )
    factory = functools.partial(
        load_tokenizer,
        model_file=args.model_file,
        tokenizer_type=tokenizer_type,
        tokenizer_file=args.tokenizer_file,
        register_path=register_path,
    )
    meta = preprocess(
        args.dataset_type,
        args.input_glob,
        args.output_file,
        factory,
        args.seq_length,
        pad_token_id=args.pad_token_id,
        chat_format=args.chat_format,
        pack=args.pack,
        repeat=args.repeat,
        file_partition=args.file_partition,
        num_workers=args.num_workers,
        on_long=args.on_long,
        on_error=args.on_error,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        samples_num=args.samples_num if args.samples_num is not None else 10000,
    )
    print(json.dumps({"output": meta["files"], "counts": meta["counts"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and preprocess; a bad input is one `error: ...` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return run_cli(_preprocess, args)
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
