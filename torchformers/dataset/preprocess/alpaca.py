"""Alpaca records -> conversation records, as MindFormers' `tools/dataset_preprocess/llama/alpaca_converter.py`.

Input: a JSON list of `{"instruction", "input", "output"}` records (extra keys such as `text` are
ignored). Output: a JSON list of `{"id": "<1-based>", "conversations": [{"from": "human", "value":
<Alpaca prompt>}, {"from": "gpt", "value": <output>}]}`, written with indent 2 and `ensure_ascii=False`.
The output file is never overwritten (as MindFormers r1.5) and is written atomically; its folder is
created when missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torchformers.errors import DataError

__all__ = ["PROMPT_DICT", "ConversionError", "alpaca_to_conversations", "convert"]

PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


class ConversionError(DataError):
    """The Alpaca input is not what the converter expects."""


def alpaca_to_conversations(records: list, source: str = "<input>") -> list[dict]:
    """Convert Alpaca records to MindFormers' conversation records (ids from "1")."""
    if not isinstance(records, list):
        raise ConversionError(f"{source}: expected a JSON list of Alpaca records, got a {type(records).__name__}")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ConversionError(f"{source}: record {i} is a {type(rec).__name__}, expected an object")
        missing = [k for k in ("instruction", "output") if not isinstance(rec.get(k), str)]
        if missing:
            raise ConversionError(
                f"{source}: record {i} lacks the string field(s) {missing} (keys seen: {sorted(rec)})"
            )
        template = PROMPT_DICT["prompt_input"] if rec.get("input") else PROMPT_DICT["prompt_no_input"]
        prompt = template.format(instruction=rec["instruction"], input=rec.get("input", ""))
        out.append(
            {
                "id": str(i + 1),
                "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": rec["output"]}],
            }
        )
    return out


def convert(data_path: str | os.PathLike, output_path: str | os.PathLike) -> int:
    """Convert the file `data_path` into `output_path`; returns the number of records."""
    data_path, output_path = Path(data_path), Path(output_path)
    if output_path.exists():
        raise ConversionError(f"--output_path {output_path} already exists; remove it or choose another name")
    if not data_path.is_file():
        raise ConversionError(f"--data_path {data_path} is not a file")
    text = data_path.read_text(encoding="utf-8")
    if not text.strip():
        raise ConversionError(f"--data_path {data_path} is empty")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{data_path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from None
    conversations = alpaca_to_conversations(records, str(data_path))
    try:  # only once the input is known to be good, so a mistake leaves no new folders behind
        output_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConversionError(f"--output_path {output_path}: cannot create its folder ({err})") from None
    # not utils.atomic_write_bytes: its temporary file (mkstemp) would leave the output readable by its owner only
    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(conversations, f, ensure_ascii=False, indent=2)
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(conversations)
