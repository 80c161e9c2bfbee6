"""Raw text (`wiki`) -> token ids, as MindFormers' `llama_preprocess.py` (`clean_wikitext`, `tokenize_wiki`).

The text is cleaned as MindFormers' `clean_wikitext` does, split on blank lines, headings (paragraphs
starting with "=") dropped, and each paragraph encoded as `<s> ... </s>`. Files are read in chunks of
whole paragraphs (`iter_wiki_chunks`), each cut between two paragraphs ("X\\n\\nY", X and Y not blank),
so files larger than memory work; a bracket or quote pair of the cleaning regexes that spans such a
cut is not rejoined (MindFormers cleans the whole file at once).
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
