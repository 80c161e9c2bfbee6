"""Conversation input streamed with line numbers: a JSON list (`[{...}, ...]`) or JSON lines.

MindFormers' `llama_preprocess.py` loads the whole file with `json.load`; here the records are
streamed, so files larger than memory work, and every error names the file and line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchformers.dataset.preprocess.errors import PreprocessError

__all__ = ["iter_json_records", "json_items", "parse_json_line"]


def iter_json_records(path: str | os.PathLike, read_size: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, record)` from a JSON list (`[{...}, ...]`) or a JSON-lines file, streaming.

    Raises PreprocessError naming the file and line of malformed JSON, and for empty files.
    """
    raw, items = json_items(path, read_size)
    if not raw:
        yield from items
        return
    for lineno, line in items:
        yield lineno, parse_json_line(path, lineno, line)


def json_items(path: str | os.PathLike, read_size: int = 1 << 20) -> tuple[bool, Iterator[tuple[int, Any]]]:
    """`(False, (line, record) of a JSON list)` or `(True, (line, text) of each non-blank line of JSON lines)`.

    JSON lines are handed over unparsed so that the workers parse them (`parse_json_line`); a JSON
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


def parse_json_line(path: str | os.PathLike, lineno: int, line: str) -> Any:
    """One JSON line parsed; malformed JSON raises PreprocessError naming `path:line:column`."""
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
