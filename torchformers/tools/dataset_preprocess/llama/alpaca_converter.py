"""Alpaca JSON -> conversation JSON, as MindFormers' `tools/dataset_preprocess/llama/alpaca_converter.py`.

The command line over `torchformers.dataset.preprocess.alpaca` (the conversion itself): a JSON list of
Alpaca records becomes a JSON list of `{"id", "conversations": [human prompt, gpt answer]}`. The
output file is never overwritten and is written atomically; its folder is created when missing.

    python -m torchformers.tools.dataset_preprocess.llama.alpaca_converter \
        --data_path alpaca_data.json --output_path alpaca-data-conversation.json
"""

from __future__ import annotations

import argparse
import sys

from torchformers.dataset.preprocess.alpaca import PROMPT_DICT, ConversionError, alpaca_to_conversations, convert
from torchformers.errors import run_cli

__all__ = ["PROMPT_DICT", "ConversionError", "alpaca_to_conversations", "build_parser", "convert", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", type=str, default="alpaca-data.json")
    parser.add_argument("--output_path", type=str, default="alpaca-data-conversation.json")
    return parser


def _convert(args: argparse.Namespace) -> int:
    n = convert(args.data_path, args.output_path)
    print(f"wrote {n} conversations to {args.output_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, convert; a bad input is one `error: ...` line on stderr and exit status 2."""
    return run_cli(_convert, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
