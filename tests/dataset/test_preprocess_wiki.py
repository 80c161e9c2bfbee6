"""Wiki text -> packed seq_length + 1 samples: every token kept once, in order, except the counted tail; the text
cleaned exactly as MindFormers' `clean_wikitext` cleans the whole file (fixtures/make_clean_wikitext_reference.py)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from torchformers.tools.dataset_preprocess.llama.llama_preprocess import clean_wikitext, iter_wiki_chunks, preprocess


def test_clean_wikitext_undoes_wikitext_tokenization():
    raw = "The 1 @,@ 000 @-@ year plan ( big ) , 3 @.@ 5 km ; done . \n = = Heading = = \n"
    assert clean_wikitext(raw) == "The 1,000-year plan (big), 3.5 km; done.\n== Heading ==\n"


def test_wiki_packs_all_tokens_once(wiki_text_file, llama2_factory, tmp_path):
    tok = llama2_factory()
    text = wiki_text_file.read_text(encoding="utf-8")
    # small read blocks: many chunks, so the pool and the chunk boundaries are exercised
    chunks = list(iter_wiki_chunks(wiki_text_file, read_size=1 << 16))
    assert len(chunks) > 10 and "".join(chunks) == text
    # the reference stream: MindFormers' clean of the whole file, split, encode, in one process, no packing
    reference = []
    for para in clean_wikitext(text).split("\n\n"):
        if para and not para.strip().startswith("="):
            reference += [tok.bos_token_id, *tok.encode(para), tok.eos_token_id]
    seq_length = 511
    out = tmp_path / "wiki.parquet"
    import torchformers.dataset.preprocess.runner as lp

    lp_iter = lp.iter_wiki_chunks
    lp.iter_wiki_chunks = lambda path: lp_iter(path, read_size=1 << 16)
    try:
        meta = preprocess(
            "wiki", str(wiki_text_file), out, llama2_factory, seq_length=seq_length, num_workers=2, progress=False
        )
    finally:
        lp.iter_wiki_chunks = lp_iter
    table = pq.read_table(out)
    rows = table.column("input_ids").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    assert rows.shape[1] == seq_length + 1
    n = rows.size
    counts = meta["counts"]
    assert counts["tokens"] == len(reference)
    assert counts["tokens_written"] == n and counts["tail_tokens_dropped"] == len(reference) - n
    assert 0 <= counts["tail_tokens_dropped"] < seq_length + 1
    assert np.array_equal(rows.reshape(-1), np.asarray(reference[:n], dtype=np.int32))


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("read_size", [1 << 10, 1 << 14, 1 << 20])
def test_chunked_cleaning_is_mindformers_clean_wikitext_of_the_whole_file(wiki_text_file, read_size):
    reference = json.loads((FIXTURES / "clean_wikitext_reference.json").read_text(encoding="utf-8"))
    text = wiki_text_file.read_text(encoding="utf-8")
    assert sha256(text) == reference["input_sha256"], "the text/wiki.utf8 asset changed: regenerate the reference"
    chunks = list(iter_wiki_chunks(wiki_text_file, read_size=read_size))
    assert len(chunks) > 1 and "".join(chunks) == text
    cleaned = "".join(clean_wikitext(chunk) for chunk in chunks)
    assert sha256(cleaned) == reference["cleaned_sha256"]
    paragraphs = [p for p in cleaned.split("\n\n") if p and not p.strip().startswith("=")]
    assert len(paragraphs) == reference["paragraphs"]
    # cleaning paragraph by paragraph is not the same: quote and bracket pairs span paragraphs in this text
    naive = "".join(clean_wikitext(piece) for piece in re.split(r"(?<=\S\n\n)(?=\S)", text))
    assert sha256(naive) != reference["cleaned_sha256"]


@pytest.mark.parametrize("read_size", [4, 64, 1 << 20])
def test_pairs_across_paragraphs_are_cleaned_as_mindformers_does(read_size):
    sample = FIXTURES / "wikitext_sample.txt"
    expected = (FIXTURES / "wikitext_sample.cleaned.txt").read_text(encoding="utf-8")
    assert "(see below .\nOpen" in expected and "Closing here] and there)" in expected  # a pair spans paragraphs
    assert "".join(clean_wikitext(chunk) for chunk in iter_wiki_chunks(sample, read_size=read_size)) == expected
