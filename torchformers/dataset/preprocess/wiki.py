"""Raw text (`wiki`) -> token ids, as MindFormers' `llama_preprocess.py` (`clean_wikitext`, `tokenize_wiki`).

The text is cleaned as MindFormers' `clean_wikitext` does, split on blank lines, headings (paragraphs
starting with "=") dropped, and each paragraph encoded as `<s> ... </s>`. MindFormers cleans the whole
file at once; files are read here in chunks (`iter_wiki_chunks`), so files larger than memory work,
and the chunks are cut only where cleaning them one by one gives exactly what cleaning the whole file
gives (see `_CutFinder`). An opening bracket that is never closed leaves no such place after it: the
rest of the file is then one chunk, held in memory as MindFormers holds the whole file.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator
from typing import Any

from torchformers.dataset.preprocess.tokenizer import encode_text

__all__ = ["clean_wikitext", "iter_wiki_chunks", "tokenize_wiki_text"]

_WIKI_READ_BYTES = 1 << 20


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
_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"))


class _CutFinder:
    """The last place in a buffer where the text may be cut so that `clean_wikitext` of each piece equals
    `clean_wikitext` of the whole.

    A cut "X\\n\\n|Y" (X, Y not blank) is never inside a plain replacement (none spans a blank line)
    nor touched by the " \\n" / "\\n " ones. The five bracket and quote regexes match from an opening
    character to the first closing one after it, anywhere in the file (so also across paragraphs; their
    `\\s*` then eat the blank line), left to right. A cut is safe when no such match spans it: an even
    number of `"` and of `'` before it (quotes pair up in order), and no `(`, `[` or `{` after the last
    closing one. The earlier steps remove no bracket or quote, so counting on the raw text is exact.
    Positions are scanned once; `scan` continues where the last call stopped.
    """

    def __init__(self):
        self.pos, self.double, self.single, self.open, self.safe = 0, 0, 0, [False] * 3, None

    def scan(self, buffer: str) -> int | None:
        for match in _PARAGRAPH_CUT.finditer(buffer, self.pos):  # a cut is never followed by a candidate's \S
            cut = match.start() + 3
            self.double += buffer.count('"', self.pos, cut)
            self.single += buffer.count("'", self.pos, cut)
            for k, (opening, closing) in enumerate(_PAIRS):
                last_open, last_close = buffer.rfind(opening, self.pos, cut), buffer.rfind(closing, self.pos, cut)
                if last_open != last_close:  # both -1: no change
                    self.open[k] = last_open > last_close
            self.pos = cut
            if self.double % 2 == 0 and self.single % 2 == 0 and not any(self.open):
                self.safe = cut
        return self.safe


def iter_wiki_chunks(path: str | os.PathLike, read_size: int = _WIKI_READ_BYTES) -> Iterator[str]:
    """Yield the text of `path` in pieces that `clean_wikitext` cleans as it cleans the whole text."""
    with open(path, encoding="utf-8") as f:
        buffer, finder = "", _CutFinder()
        while block := f.read(read_size):
            buffer += block
            cut = finder.scan(buffer)
            if cut is not None:
                yield buffer[:cut]
                buffer = buffer[cut:]
                finder = _CutFinder()  # the state at a safe cut is the state at the start of the text
        if buffer:
            yield buffer


def tokenize_wiki_text(tokenizer: Any, text: str) -> tuple[list[int], dict[str, int]]:
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
