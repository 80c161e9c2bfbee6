"""Tokenize raw text (`wiki`) or conversations (`qa`) into fixed-length samples, as MindFormers'
`tools/dataset_preprocess/llama/llama_preprocess.py` (and `research/llama3_1/llama3_1_preprocess.py`).

Every sample is `seq_length + 1` tokens (the model shifts inputs and labels itself). Output is Parquet
(pyarrow) instead of MindRecord: fixed-size int32 list columns `input_ids` (and `labels` for qa;
`position_ids`/`segment_ids` when conversations are packed), plus `<output_file>.meta.json` with the
tokenizer, `seq_length`, the files and every count (records read, samples written, truncated, dropped,
tokens lost to the tail remainder).

- `wiki`: MindFormers' `clean_wikitext`, split on blank lines, headings (paragraphs starting with "=")
  dropped, each paragraph encoded as `<s> ... </s>`, all concatenated (`--repeat` times) and cut into
  non-overlapping `seq_length + 1` chunks; the last partial chunk is dropped and counted.
  Input is cleaned chunk by chunk, each chunk a run of whole paragraphs cut between two paragraphs
  ("X\\n\\nY", X and Y not blank), so files larger than memory work; a bracket or quote pair of the
  cleaning regexes that spans such a cut is not rejoined (MindFormers cleans the whole file at once).
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
import array
import collections
import functools
import gc
import glob
import itertools
import json
import logging
import multiprocessing
import os
import queue
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from torchformers.tools.dataset_preprocess.llama.conversation import get_default_conv_template

__all__ = [
    "CHAT_FORMATS",
    "IGNORE_TOKEN_ID",
    "PreprocessError",
    "SentencePieceTokenizer",
    "clean_wikitext",
    "encode_conversation",
    "iter_json_records",
    "iter_wiki_chunks",
    "load_tokenizer",
    "main",
    "preprocess",
    "tokenize_wiki_text",
]

logger = logging.getLogger(__name__)

IGNORE_TOKEN_ID = -100
CHAT_FORMATS = ("vicuna", "llama2", "llama3", "template")
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MAX_DETAILED_WARNINGS = 20  # per kind; the rest are counted only
_WIKI_READ_BYTES = 1 << 20


class PreprocessError(ValueError):
    """Bad input or arguments; the message names the file, line or argument."""


# --------------------------------------------------------------------------------------------------
# Tokenizer access. The preprocessing needs only: encode(text, add_special_tokens=False) (or
# __call__(text)["input_ids"]), bos_token_id, eos_token_id, pad_token_id and, for `template`,
# apply_chat_template(messages, tokenize=False, add_generation_prompt=...).
# --------------------------------------------------------------------------------------------------


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS, from any tokenizer with the interface above."""
    if hasattr(tokenizer, "encode"):
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # encode(text) without the keyword: assumed to add nothing
            ids = tokenizer.encode(text)
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids)


def _special_id(tokenizer, token: str) -> int:
    """The id of a special token such as "<|eot_id|>" (HF-style or tiktoken-style tokenizers)."""
    specials = getattr(tokenizer, "special_tokens", None)
    if isinstance(specials, dict) and token in specials:
        return int(specials[token])
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None:
        found = convert(token)
        if isinstance(found, int) and found != getattr(tokenizer, "unk_token_id", None):
            return found
    raise PreprocessError(f"the tokenizer {type(tokenizer).__name__} has no special token {token!r}")


class SentencePieceTokenizer:
    """A SentencePiece model with the small interface above (used when `LlamaTokenizer` is not registered)."""

    def __init__(self, vocab_file: str | os.PathLike):
        import sentencepiece

        self.vocab_file = str(vocab_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=self.vocab_file)
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        pad = self.sp.pad_id()
        self.pad_token_id = pad if pad >= 0 else self.sp.unk_id()  # Llama 2: pad = <unk> = 0, as MindFormers

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if not self.sp.is_control(i)]
        return self.sp.decode(ids)


def load_tokenizer(
    model_file: str | None = None,
    tokenizer_type: str | None = None,
    tokenizer_file: str | None = None,
    register_path: str | None = None,
):
    """Build the tokenizer the command line names.

    `tokenizer_type` is a registered TOKENIZER name (`LlamaTokenizer`, or an external class such as
    `Llama3Tokenizer` found in `register_path`), or `module_file.ClassName` as in YAML `auto_register`.
    Without it, `model_file` is a SentencePiece model read by `LlamaTokenizer` (as MindFormers), or by a
    plain SentencePiece adapter when that class is not available.
    """
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister, RegistryError

    try:  # built-in tokenizers register themselves on import
        import torchformers.models  # noqa: F401
    except ImportError:
        pass
    kind = MindFormerModuleType.TOKENIZER
    if tokenizer_type is None:
        if model_file is None:
            raise PreprocessError("give a tokenizer: --model_file (SentencePiece model) or --tokenizer_type NAME")
        if not Path(model_file).is_file():
            raise PreprocessError(f"--model_file {model_file} is not a file")
        if MindFormerRegister.is_exist(kind, "LlamaTokenizer"):
            cls = MindFormerRegister.get_cls(kind, "LlamaTokenizer")
            return cls(vocab_file=model_file, add_bos_token=False, add_eos_token=False)
        return SentencePieceTokenizer(model_file)
    try:
        cls = _resolve_tokenizer_class(tokenizer_type, register_path)
    except RegistryError as err:
        raise PreprocessError(f"--tokenizer_type {tokenizer_type}: {err}") from None
    kwargs = {}
    for key, value in (("vocab_file", model_file), ("tokenizer_file", tokenizer_file)):
        if value is not None:
            if not Path(value).is_file():
                raise PreprocessError(f"--{'model_file' if key == 'vocab_file' else key} {value} is not a file")
            kwargs[key] = value
            # special tokens and the chat template saved beside the vocabulary (Hugging Face layout)
            saved = Path(value).parent / "tokenizer_config.json"
            if saved.is_file():
                settings = json.loads(saved.read_text(encoding="utf-8"))
                kwargs.update({k: v for k, v in settings.items() if k in _SAVED_TOKENIZER_KEYS and k not in kwargs})
    return cls(**kwargs)


_SAVED_TOKENIZER_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token", "add_eos_token",
                         "chat_template")  # fmt: skip


def _resolve_tokenizer_class(tokenizer_type: str, register_path: str | None):
    from torchformers.cli import use_register_path
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
    from torchformers.tools.register.config import ConfigError
    from torchformers.tools.register.register import import_module_from_folder

    kind = MindFormerModuleType.TOKENIZER
    if register_path:
        # as run_mindformer.py: the current directory first, then the repository root
        try:
            folder = use_register_path(register_path)
        except ConfigError as err:
            raise PreprocessError(str(err)) from None
        if "." in tokenizer_type:  # module_file.ClassName, as YAML auto_register
            return MindFormerRegister.auto_register(tokenizer_type, kind)
        if not MindFormerRegister.is_exist(kind, tokenizer_type):
            # import the folder's tokenizer modules; their classes register themselves or are picked up here
            for path in sorted(folder.glob("*tokeniz*.py")):
                module = import_module_from_folder(folder, path.stem)
                found = getattr(module, tokenizer_type, None)
                if isinstance(found, type) and not MindFormerRegister.is_exist(kind, tokenizer_type):
                    MindFormerRegister.register_cls(found, kind)
    return MindFormerRegister.get_cls(kind, tokenizer_type)


def tokenizer_name(tokenizer) -> str:
    path = getattr(tokenizer, "vocab_file", None) or getattr(tokenizer, "name_or_path", None)
    return f"{type(tokenizer).__name__}({Path(path).name})" if path else type(tokenizer).__name__


# --------------------------------------------------------------------------------------------------
# Input: JSON lists and JSON lines, streamed with line numbers.
# --------------------------------------------------------------------------------------------------


def iter_json_records(path: str | os.PathLike, read_size: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, record)` from a JSON list (`[{...}, ...]`) or a JSON-lines file, streaming.

    Raises PreprocessError naming the file and line of malformed JSON, and for empty files.
    """
    raw, items = _json_items(path, read_size)
    if not raw:
        yield from items
        return
    for lineno, line in items:
        yield lineno, _parse_json_line(path, lineno, line)


def _json_items(path: str | os.PathLike, read_size: int = 1 << 20) -> tuple[bool, Iterator[tuple[int, Any]]]:
    """`(False, (line, record) of a JSON list)` or `(True, (line, text) of each non-blank line of JSON lines)`.

    JSON lines are handed over unparsed so that the workers parse them (`_parse_json_line`); a JSON
    list has to be parsed here to find where each record ends. The empty-file check happens now.
    """
    path = Path(path)
    f = open(path, encoding="utf-8")  # closed by the iterator (or on error here)
    try:
        head = ""
        while not head.strip():
            block = f.read(read_size)
            if not block:
                raise PreprocessError(f"{path}: the file is empty")
            head += block
    except BaseException:
        f.close()
        raise
    if head.lstrip().startswith("["):
        return False, _closing(f, _iter_json_array(path, f, head, read_size))
    return True, _closing(f, _iter_json_lines(f, head, read_size))


def _closing(f, items: Iterator) -> Iterator:
    with f:
        yield from items


def _iter_json_lines(f, buffer: str, read_size: int) -> Iterator[tuple[int, str]]:
    lines_consumed = 0
    while True:
        *complete, buffer = buffer.split("\n")
        for line in complete:
            lines_consumed += 1
            if line.strip():
                yield lines_consumed, line
        block = f.read(read_size)
        if not block:
            break
        buffer += block
    if buffer.strip():
        yield lines_consumed + 1, buffer


def _parse_json_line(path: Path, lineno: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise PreprocessError(f"{path}:{lineno}:{err.colno}: malformed JSON line: {err.msg}") from None


_JSON_SPACE = re.compile(r"[ \t\r\n]*")
_JSON_COMMA = re.compile(r"[ \t\r\n]*,[ \t\r\n]*")
_JSON_NUMBER_TAIL = re.compile(r"[0-9eE.+-]*")  # after a value: all that is left of the buffer could extend it


def _iter_json_array(path: Path, f, buffer: str, read_size: int) -> Iterator[tuple[int, Any]]:
    decode = json.JSONDecoder().raw_decode
    pos = buffer.index("[") + 1
    line = 1 + buffer.count("\n", 0, pos)
    eof = False
    expect_value = True  # after "[" or ","
    while True:
        if not expect_value:  # the common case first: ", value" with the whole value in the buffer
            comma = _JSON_COMMA.match(buffer, pos)
            if comma is not None:
                start = comma.end()
                try:
                    record, end = decode(buffer, start)
                except json.JSONDecodeError:  # cut by the buffer's end, or malformed: the careful path decides
                    end = len(buffer)
                if not _JSON_NUMBER_TAIL.fullmatch(buffer, end):  # a number cut by the buffer's end may go on
                    line += buffer.count("\n", pos, start)
                    yield line, record
                    line += buffer.count("\n", start, end)
                    pos = end
                    if pos > read_size:  # drop what was consumed
                        buffer, pos = buffer[pos:], 0
                    continue
        # skip whitespace (and one comma between values)
        while True:
            end = _JSON_SPACE.match(buffer, pos).end()
            line += buffer.count("\n", pos, end)
            pos = end
            if pos < len(buffer) or eof:
                break
            block = f.read(read_size)
            eof = not block
            buffer, pos = buffer[pos:] + block, 0
        if pos >= len(buffer):
            raise PreprocessError(f"{path}:{line}: unexpected end of file inside the JSON list (missing ']')")
        char = buffer[pos]
        if char == "]":
            rest = (buffer[pos + 1 :] + f.read()).strip()
            if rest:
                raise PreprocessError(f"{path}:{line}: extra data after the closing ']' of the JSON list")
            return
        if char == ",":
            if expect_value:
                raise PreprocessError(f"{path}:{line}: malformed JSON: a value is missing before ','")
            pos += 1
            expect_value = True
            continue
        if not expect_value:
            raise PreprocessError(f"{path}:{line}: malformed JSON: expected ',' or ']' between list items")
        while True:
            try:
                record, end = decode(buffer, pos)
                if eof or not _JSON_NUMBER_TAIL.fullmatch(buffer, end):
                    break
            except json.JSONDecodeError as err:
                if eof:
                    err_line = line + buffer.count("\n", pos, err.pos)
                    raise PreprocessError(f"{path}:{err_line}: malformed JSON: {err.msg}") from None
            block = f.read(max(read_size, len(buffer)))  # grow geometrically: no quadratic re-parsing
            eof = not block
            buffer, pos = buffer[pos:] + block, 0
        yield line, record
        line += buffer.count("\n", pos, end)
        pos = end
        expect_value = False
        if pos > read_size:  # drop what was consumed
            buffer, pos = buffer[pos:], 0


def _conversation_messages(record, where: str) -> list[tuple[str, str]]:
    """`[(role, text)]` with roles system/user/assistant from the accepted record shapes."""
    if not isinstance(record, dict):
        raise PreprocessError(f"{where}: expected a JSON object per conversation, got {type(record).__name__}")
    if "conversations" in record:
        turns, role_key, text_key = record["conversations"], "from", "value"
    elif "messages" in record:
        turns, role_key, text_key = record["messages"], "role", "content"
    else:
        raise PreprocessError(
            f"{where}: the record has neither 'conversations' (from/value) nor 'messages' (role/content); "
            f"keys seen: {sorted(record)} (convert Alpaca data with alpaca_converter first)"
        )
    if not isinstance(turns, list) or not turns:
        raise PreprocessError(f"{where}: '{'conversations' if role_key == 'from' else 'messages'}' is empty")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise PreprocessError(f"{where}: turn {k} lacks '{role_key}' or '{text_key}': {turn!r:.200}")
        role = ROLE_NAMES.get(str(turn[role_key]).lower())
        if role is None:
            raise PreprocessError(
                f"{where}: turn {k} has {role_key}={turn[role_key]!r}; expected one of {sorted(ROLE_NAMES)}"
            )
        if not isinstance(turn[text_key], str):
            raise PreprocessError(f"{where}: turn {k} '{text_key}' is not a string")
        out.append((role, turn[text_key]))
    system = [m for m in out if m[0] == "system"]
    if len(system) > 1 or (system and out[0][0] != "system"):
        raise PreprocessError(f"{where}: a system message may only come first")
    dialog = out[1:] if system else out
    if dialog and dialog[0][0] != "user":  # as MindFormers: a conversation opening with the assistant loses that turn
        dialog = dialog[1:]
    for k, (role, _) in enumerate(dialog):
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            raise PreprocessError(f"{where}: turn {k} is from {role!r}, expected {want!r} (turns must alternate)")
    if not any(role == "assistant" for role, _ in dialog):
        raise PreprocessError(f"{where}: the conversation has no assistant turn to learn from")
    return system + dialog


# --------------------------------------------------------------------------------------------------
# Conversations -> (input_ids, labels), unpadded.
# --------------------------------------------------------------------------------------------------


def encode_conversation(tokenizer, messages: list[tuple[str, str]], chat_format: str = "vicuna"):
    """`(input_ids, labels, mismatch)` of one conversation; labels are -100 except on assistant tokens.

    `mismatch` is True when the per-round token count disagrees with the whole (MindFormers then
    masks every label of the sample, and so does the caller).
    """
    if chat_format == "vicuna":
        return _encode_vicuna(tokenizer, messages)
    if chat_format == "llama2":
        return _encode_llama2(tokenizer, messages)
    if chat_format == "llama3":
        return _encode_llama3(tokenizer, messages)
    if chat_format == "template":
        return _encode_template(tokenizer, messages)
    raise PreprocessError(f"--chat_format {chat_format!r}: expected one of {CHAT_FORMATS}")


def _encode_vicuna(tokenizer, messages):
    conv = get_default_conv_template("vicuna")
    if messages[0][0] == "system":
        conv.system, messages = messages[0][1], messages[1:]
    for j, (_, text) in enumerate(messages):
        conv.append_message(conv.roles[j % 2], text)
    rounds = conv.get_prompt().split(conv.sep2)
    sep = conv.sep + conv.roles[1] + ": "
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, labels = [bos], [IGNORE_TOKEN_ID]
    labelled = True  # MindFormers stops labelling at the first round without the assistant separator
    for rou in rounds:
        if rou == "":
            break
        round_ids = [*encode_text(tokenizer, rou), eos]  # "<s> round </s>" without the <s>
        parts = rou.split(sep)
        if labelled and len(parts) == 2:
            # len(tokenizer(parts[0] + sep)) - 3 in MindFormers: BOS, EOS and the trailing "▁" of "ASSISTANT: ",
            # which merges with the answer's first word in the full round
            instruction_len = max(len(encode_text(tokenizer, parts[0] + sep)) - 1, 0)
            labels += [IGNORE_TOKEN_ID] * instruction_len + round_ids[instruction_len:]
        else:
            labelled = False
            labels += [IGNORE_TOKEN_ID] * len(round_ids)
        ids += round_ids
    labels = labels[: len(ids)]
    mismatch = not labelled
    return ids, labels, mismatch


_B_INST, _E_INST = "[INST]", "[/INST]"
_B_SYS, _E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _encode_llama2(tokenizer, messages):
    """Meta's Llama 2 chat format: `<s>[INST] q [/INST] a </s>` per exchange, system folded into the first q."""
    if messages[0][0] == "system":
        (_, system), (role, first) = messages[0], messages[1]
        messages = [(role, _B_SYS + system + _E_SYS + first), *messages[2:]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, labels, mismatch = [], [], False
    for (_, question), (_, answer) in zip(messages[::2], messages[1::2]):
        prompt = f"{_B_INST} {question.strip()} {_E_INST}"
        full = encode_text(tokenizer, f"{prompt} {answer.strip()} ")
        prompt_ids = encode_text(tokenizer, prompt)
        if full[: len(prompt_ids)] != prompt_ids:
            mismatch = True
        ids += [bos, *full, eos]
        labels += [IGNORE_TOKEN_ID] * (1 + len(prompt_ids)) + full[len(prompt_ids) :] + [eos]
    return ids, labels, mismatch


def _encode_llama3(tokenizer, messages):
    """Meta's Llama 3 chat format, built from tokens (`ChatFormat.encode_dialog_prompt`)."""
    start, end = _special_id(tokenizer, "<|start_header_id|>"), _special_id(tokenizer, "<|end_header_id|>")
    eot = _special_id(tokenizer, "<|eot_id|>")
    ids, labels = [tokenizer.bos_token_id], [IGNORE_TOKEN_ID]
    for role, content in messages:
        header = [start, *encode_text(tokenizer, role), end, *encode_text(tokenizer, "\n\n")]
        body = [*encode_text(tokenizer, content.strip()), eot]
        ids += header + body
        labels += [IGNORE_TOKEN_ID] * len(header) + (body if role == "assistant" else [IGNORE_TOKEN_ID] * len(body))
    return ids, labels, False


def _encode_template(tokenizer, messages):
    """Through `tokenizer.apply_chat_template`: the text each assistant message adds is learnt, the rest masked.

    The rendered text is cut at the end of each generation prompt and each assistant message, and the
    pieces are encoded one by one (the template's special-token text must be understood by `encode`).
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise PreprocessError(f"--chat_format template: {type(tokenizer).__name__} has no apply_chat_template")
    chat = [{"role": role, "content": text} for role, text in messages]

    def render(msgs, generation_prompt):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(chat, False)
    cuts, mismatch = [], False  # (start, end) of learnt spans in `full`
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before, after = render(chat[:i], True), render(chat[: i + 1], False)
        if not (full.startswith(after) and after.startswith(before)):
            mismatch = True
            continue
        cuts.append((len(before), len(after)))
    ids, labels, pos = [], [], 0
    for start, end in cuts:
        prompt_ids, answer_ids = encode_text(tokenizer, full[pos:start]), encode_text(tokenizer, full[start:end])
        ids += prompt_ids + answer_ids
        labels += [IGNORE_TOKEN_ID] * len(prompt_ids) + answer_ids
        pos = end
    tail = encode_text(tokenizer, full[pos:])
    ids += tail
    labels += [IGNORE_TOKEN_ID] * len(tail)
    return ids, labels, mismatch


# --------------------------------------------------------------------------------------------------
# Wiki text.
# --------------------------------------------------------------------------------------------------


def clean_wikitext(string: str) -> str:
    """MindFormers' `clean_wikitext`: undo the wikitext tokenization (" @-@ " -> "-", spacing, headings)."""
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    # punctuation
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    # double brackets
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


_PARAGRAPH_CUT = re.compile(r"\S\n\n(?=\S)")


def iter_wiki_chunks(path: str | os.PathLike, read_size: int = _WIKI_READ_BYTES) -> Iterator[str]:
    """Yield the text of `path` in pieces of whole paragraphs, each cut right after an "X\\n\\n" before "Y"."""
    with open(path, encoding="utf-8") as f:
        buffer = ""
        while block := f.read(read_size):
            buffer += block
            last = None
            # the last cut in the buffer: search only its tail first (cheap), the whole buffer if needed
            for start in (max(0, len(buffer) - 4 * read_size), 0):
                last = collections.deque(_PARAGRAPH_CUT.finditer(buffer, start), maxlen=1)
                last = last[0] if last else None
                if last is not None:
                    break
            if last is not None:
                cut = last.start() + 3
                yield buffer[:cut]
                buffer = buffer[cut:]
        if buffer:
            yield buffer


def tokenize_wiki_text(tokenizer, text: str) -> tuple[list[int], dict[str, int]]:
    """Clean `text`, drop headings and encode each paragraph as `<s> paragraph </s>`; returns ids and counts."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    counts = collections.Counter()
    for para in clean_wikitext(text).split("\n\n"):
        if not para:
            continue
        if para.strip().startswith("="):
            counts["headings_dropped"] += 1
            continue
        counts["paragraphs"] += 1
        ids += [bos, *encode_text(tokenizer, para), eos]
    return ids, dict(counts)


# --------------------------------------------------------------------------------------------------
# Workers.
# --------------------------------------------------------------------------------------------------

_worker_tokenizer = None


def _qa_task(
    chunk: tuple[str, bool, list[tuple[int, Any]]], chat_format: str, on_error: str, length: int, on_long: str
):
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
    tokenizer = _worker_tokenizer
    for line, item in items:
        record = _parse_json_line(source, line, item) if raw else item  # malformed JSON always stops the run
        try:
            messages = _conversation_messages(record, f"{source}:{line}")
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


def _wiki_task(text: str):
    ids, counts = tokenize_wiki_text(_worker_tokenizer, text)
    return np.asarray(ids, dtype=np.int32), counts, len(text)


_IN_FLIGHT_PER_WORKER = 4  # chunks a worker may hold before the writer has taken them (bounds memory)


def _map_chunks(
    fn,
    make_items: Callable[[], Iterable],
    tokenizer_factory,
    tokenizer=None,
    *,
    num_workers: int,
    exiting: list | None = None,
):
    """`fn(item)` for every item of `make_items()`, yielded in input order.

    With one worker, inline. With N, this process and N - 1 forked ones each build the item sequence
    themselves (reading the input, and parsing it for a JSON list: cheap next to tokenizing) and claim
    the next unclaimed item from a shared counter; the forked ones send their results through one
    queue, and this process puts all results back in order. Only results cross between processes, no
    process waits on another while there is work, and the writing done here is balanced by this
    process claiming fewer items. A semaphore bounds the items claimed but not yet written. Forked
    workers inherit the tokenizer loaded here. Once every result is in, the workers are only exiting:
    with `exiting` given, they are appended to it for the caller to join later (after writing the
    output) instead of being waited for here.
    """
    global _worker_tokenizer
    _worker_tokenizer = tokenizer if tokenizer is not None else tokenizer_factory()
    if num_workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        logger.warning("parallel preprocessing needs the 'fork' start method; using one process")
        num_workers = 1
    if num_workers <= 1:
        yield from map(fn, make_items())
        return
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    claimed = ctx.Value("q", 0)
    window = ctx.BoundedSemaphore(_IN_FLIGHT_PER_WORKER * num_workers)
    # objects alive now (the tokenizer, imported modules) go to the collector's permanent generation, so
    # collections in the workers neither walk them nor touch (so copy) the pages they share with this process
    gc.freeze()
    workers = [
        ctx.Process(target=_worker_loop, args=(fn, make_items, claimed, window, results), daemon=True)
        for _ in range(num_workers - 1)
    ]
    try:
        for worker in workers:
            worker.start()
        own = _OwnShare(fn, make_items())
        pending: dict[int, tuple[str, Any]] = {}
        total = None  # the number of items, once a process has run out of them
        j = 0
        while total is None or j < total:
            if j in pending:
                kind, value = pending.pop(j)
                if kind == "raise":
                    raise value
                if kind == "error":
                    _raise_worker_error(value)
                yield value
                window.release()
                j += 1
                continue
            try:
                kind, index, value = results.get_nowait()
            except queue.Empty:
                if not own.finished and window.acquire(block=False):
                    kind, index, value = own.run(_claim(claimed))
                    if kind == "done":
                        window.release()
                else:
                    kind, index, value = _receive(results, workers, pending)
            if kind == "done":
                total = index if total is None else min(total, index)
            else:
                pending[index] = (kind, value)
    finally:
        complete = total is not None and j >= total
        if complete and exiting is not None:
            exiting.extend(workers)
        else:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
                worker.join()
        results.close()
        gc.unfreeze()


class _OwnShare:
    """The items the main process claims: it walks the item sequence as each worker does and runs `fn`
    on the items it claims, reporting as a worker does (an exception is kept, to be raised in order)."""

    def __init__(self, fn, items: Iterable):
        self.fn, self.items = fn, enumerate(items)
        self.position = -1  # the index of the last item taken from `items`
        self.finished = False

    def run(self, index: int) -> tuple[str, int, Any]:
        try:
            while self.position < index:  # claims only grow: `index` is ahead
                self.position, item = next(self.items)
        except StopIteration:
            self.finished = True
            return "done", self.position + 1, None
        except Exception as err:  # reading or parsing the input: the item after the last one read
            self.finished = True
            return "raise", self.position + 1, err
        try:
            return "ok", index, self.fn(item)
        except Exception as err:
            self.finished = True
            return "raise", index, err


def _claim(claimed) -> int:
    """The next unclaimed item index from the shared counter."""
    with claimed.get_lock():
        claimed.value += 1
        return claimed.value - 1


def _worker_loop(fn, make_items: Callable[[], Iterable], claimed, window, out) -> None:
    window.acquire()
    mine = _claim(claimed)
    try:
        own = _OwnShare(fn, make_items())
        while True:
            kind, index, value = own.run(mine)
            if kind == "raise":  # sent as text: the exception itself may not pickle
                is_preprocess_error = isinstance(value, PreprocessError)
                text = str(value) if is_preprocess_error else "".join(traceback.format_exception(value))
                kind, value = "error", (is_preprocess_error, text)
            out.put((kind, index, value))
            if own.finished:
                break
            window.acquire()
            mine = _claim(claimed)
    except BaseException:
        out.put(("error", mine, (False, traceback.format_exc())))
    finally:
        out.close()
        out.join_thread()


def _receive(results, workers, pending) -> tuple[str, int, Any]:
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                errors = sorted(i for i, (kind, _) in pending.items() if kind == "error")
                if errors:
                    _raise_worker_error(pending[errors[0]][1])
                codes = ", ".join(str(w.exitcode) for w in workers)
                raise PreprocessError(f"the preprocessing workers exited unexpectedly (exit codes {codes})") from None


def _raise_worker_error(value) -> None:
    is_preprocess_error, message = value
    if is_preprocess_error:
        raise PreprocessError(message)
    raise RuntimeError(f"a preprocessing worker failed:\n{message}")


# --------------------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------------------


def output_files(output_file: str | os.PathLike, file_partition: int) -> list[Path]:
    """Output names: the file itself, or `<output_file>0`, `<output_file>1`, ... (MindRecord's shard names)."""
    output_file = Path(output_file)
    if file_partition == 1:
        return [output_file]
    return [output_file.with_name(f"{output_file.name}{i}") for i in range(file_partition)]


def meta_path(output_file: str | os.PathLike) -> Path:
    return Path(f"{output_file}.meta.json")


# Cheap to write (the writing process is serial): no dictionary pages nor statistics (token lists gain
# little from either), zstd level 1 (about the size snappy + dictionary gives, in half the time).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": False,
    "write_statistics": False,
}


def parquet_writer(path: str | os.PathLike, schema):
    """A `pyarrow.parquet.ParquetWriter` with the options every tokenized output uses."""
    import pyarrow.parquet as pq

    return pq.ParquetWriter(path, schema, **PARQUET_OPTIONS)


class _ParquetSink:
    """Writes fixed-length int32 rows round-robin into `file_partition` Parquet files, atomically.

    Rows arrive unpadded and are copied into one preallocated, pre-padded block per file and column;
    a full block is written as one row group and refilled with padding.
    """

    def __init__(
        self,
        files: list[Path],
        columns: list[str],
        length: int,
        schema_meta: dict,
        rows_per_group: int,
        pad_values: dict[str, int],
    ):
        import pyarrow as pa

        self.pa = pa
        self.files = files
        self.columns = columns
        self.length = length
        self.rows_per_group = rows_per_group
        self.pad_values = pad_values
        self.tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in files]
        fields = [pa.field(c, pa.list_(pa.int32(), length)) for c in columns]
        self.schema = pa.schema(fields, metadata={"torchformers": json.dumps(schema_meta)})
        self.writers: list = [None] * len(files)
        self.blocks: list[dict[str, np.ndarray] | None] = [None] * len(files)
        self.filled = [0] * len(files)
        self.rows = 0

    def add(self, columns: dict[str, np.ndarray], lengths: np.ndarray) -> None:
        """Append `len(lengths)` rows: row i of column c is the next `lengths[i]` values of `columns[c]`."""
        parts = len(self.files)
        start = 0
        for n in lengths.tolist():
            k = self.rows % parts
            block = self.blocks[k]
            if block is None:
                block = self.blocks[k] = {
                    c: np.full((self.rows_per_group, self.length), self.pad_values[c], np.int32) for c in self.columns
                }
            r = self.filled[k]
            for c, values in columns.items():
                block[c][r, :n] = values[start : start + n]
            start += n
            self.filled[k] = r + 1
            self.rows += 1
            if r + 1 == self.rows_per_group:
                self._flush(k)

    def _flush(self, k: int) -> None:
        n = self.filled[k]
        if not n:
            return
        block = self.blocks[k]
        arrays = [
            self.pa.FixedSizeListArray.from_arrays(self.pa.array(block[c][:n].ravel()), self.length)
            for c in self.columns
        ]
        if self.writers[k] is None:
            self.writers[k] = parquet_writer(self.tmp[k], self.schema)
        self.writers[k].write_table(self.pa.Table.from_arrays(arrays, schema=self.schema))
        for c in self.columns:  # written (and copied) by now: the block is reused for the next row group
            block[c][:n] = self.pad_values[c]
        self.filled[k] = 0

    def commit(self, meta: dict, meta_file: Path) -> None:

        for k in range(len(self.files)):
            self._flush(k)
            if self.writers[k] is None:  # an empty partition is still a valid file with the schema
                self.writers[k] = parquet_writer(self.tmp[k], self.schema)
            self.writers[k].close()
        meta_tmp = meta_file.with_name(f".{meta_file.name}.tmp-{os.getpid()}")
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for tmp, final in zip(self.tmp, self.files):
            os.replace(tmp, final)
        os.replace(meta_tmp, meta_file)

    def abort(self) -> None:
        for k, writer in enumerate(self.writers):
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # already failing: the temporary file is removed below anyway
                    pass
            self.tmp[k].unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------------


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
) -> dict:
    """Tokenize the inputs into Parquet; returns the metadata written next to the output.

    `tokenizer_factory` is a callable returning the tokenizer, called once here (forked workers inherit it).
    """
    if dataset_type not in ("wiki", "qa"):
        raise PreprocessError(f"--dataset_type {dataset_type!r}: expected 'wiki' or 'qa'")
    if seq_length < 1:
        raise PreprocessError(f"--seq_length must be positive, got {seq_length}")
    if file_partition < 1 or repeat < 1:
        raise PreprocessError(f"--file_partition and --repeat must be >= 1, got {file_partition} and {repeat}")
    if on_long not in ("truncate", "drop", "error"):
        raise PreprocessError(f"--on_long {on_long!r}: expected truncate, drop or error")
    if chat_format not in CHAT_FORMATS:
        raise PreprocessError(f"--chat_format {chat_format!r}: expected one of {CHAT_FORMATS}")
    inputs = _expand_inputs(input_glob)
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
    if dataset_type == "wiki":
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
    sink = _ParquetSink(files, columns, length, schema_meta, rows_per_group, pad_values)
    total = sum(p.stat().st_size for p in inputs) * repeat if dataset_type == "wiki" else None
    bar = _progress_bar(progress, total, "B" if dataset_type == "wiki" else "rec")
    started = time.perf_counter()
    exiting: list = []  # worker processes that delivered everything: joined once the output is in place
    try:
        if dataset_type == "wiki":
            counts = _run_wiki(inputs, (tokenizer_factory, tokenizer), num_workers, repeat, length, sink, bar, exiting)
        else:
            counts = _run_qa(
                inputs,
                (tokenizer_factory, tokenizer),
                num_workers,
                chat_format,
                pack,
                length,
                pad_token_id,
                on_long,
                on_error,
                chunk_records,
                sink,
                bar,
                exiting,
            )
        meta["counts"] = counts
        meta["seconds"] = round(time.perf_counter() - started, 3)
        sink.commit(meta, meta_path(output_file))
    except BaseException:
        sink.abort()
        raise
    finally:
        for worker in exiting:
            worker.join()
        if bar is not None:
            bar.close()
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    logger.info(f"wrote {sink.rows} samples of {length} tokens to {', '.join(map(str, files))} ({summary})")
    return meta


def _progress_bar(enabled: bool, total: int | None, unit: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=True, desc="tokenizing", file=sys.stderr)


def _run_wiki(inputs, tokenizer, num_workers, repeat, length, sink, bar, exiting) -> dict:
    counts = collections.Counter()
    carry = np.zeros(0, dtype=np.int32)

    def texts():
        for _ in range(repeat):
            for path in inputs:
                yield from iter_wiki_chunks(path)

    results = _map_chunks(_wiki_task, texts, *tokenizer, num_workers=num_workers, exiting=exiting)
    for ids, chunk_counts, n_chars in results:
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


def _run_qa(
    inputs,
    tokenizer,
    num_workers,
    chat_format,
    pack,
    length,
    pad_id,
    on_long,
    on_error,
    chunk_records,
    sink,
    bar,
    exiting,
) -> dict:
    counts = collections.Counter()
    warn = _Warnings()

    def chunks():
        for path in inputs:
            raw, items = _json_items(path)
            while batch := list(itertools.islice(items, chunk_records)):
                yield str(path), raw, batch

    task = functools.partial(_qa_task, chat_format=chat_format, on_error=on_error, length=length, on_long=on_long)
    packer = _Packer(length, sink) if pack else None
    results = _map_chunks(task, chunks, *tokenizer, num_workers=num_workers, exiting=exiting)
    for ids, labels, lengths, chunk_counts, warnings in results:
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
        raise PreprocessError(f"no conversation found in {', '.join(map(str, inputs))}")
    order = [
        "records",
        "samples",
        "truncated",
        "dropped_too_long",
        "records_skipped_bad",
        "label_mismatch_masked",
        "no_label_tokens",
    ]
    return {k: int(counts[k]) for k in order}


class _Packer:
    """Puts conversations into samples greedily, in input order, with `position_ids` restarting and
    `segment_ids` 1, 2, ... per conversation."""

    def __init__(self, length: int, sink: _ParquetSink):
        self.length, self.sink = length, sink
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        self.used = 0

    def add(self, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> None:
        """Conversations given end to end, as `_qa_task` returns them."""
        start = 0
        for n in lengths.tolist():
            if self.used + n > self.length:
                self.flush()
            self.items.append((ids[start : start + n], labels[start : start + n]))
            self.used += n
            start += n

    def flush(self) -> None:
        if not self.items:
            return
        columns = {
            "input_ids": np.concatenate([a for a, _ in self.items]),
            "labels": np.concatenate([b for _, b in self.items]),
            "position_ids": np.concatenate([np.arange(len(a), dtype=np.int32) for a, _ in self.items]),
            "segment_ids": np.concatenate([np.full(len(a), k + 1, np.int32) for k, (a, _) in enumerate(self.items)]),
        }
        self.sink.add(columns, np.array([self.used]))
        self.items, self.used = [], 0


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tokenize wiki text or conversations into seq_length+1 samples (Parquet)."
    )
    parser.add_argument("--dataset_type", type=str, default="wiki", choices=["wiki", "qa"])
    parser.add_argument("--input_glob", type=str, required=True, help="input file(s), a glob pattern")
    parser.add_argument("--output_file", type=str, required=True, help="output Parquet file")
    parser.add_argument("--tokenizer", type=str, default="llama", help="kept for MindFormers compatibility")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    factory = functools.partial(
        load_tokenizer,
        model_file=args.model_file,
        tokenizer_type=args.tokenizer_type,
        tokenizer_file=args.tokenizer_file,
        register_path=args.register_path,
    )
    from torchformers.models.tokenization_utils_base import TokenizerError
    from torchformers.tools.register import RegistryError

    try:
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
        )
    except (PreprocessError, TokenizerError, RegistryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    print(json.dumps({"output": meta["files"], "counts": meta["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
