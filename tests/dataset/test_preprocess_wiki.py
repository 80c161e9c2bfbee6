"""Wiki text -> packed seq_length + 1 samples: every token kept once, in order, except the counted tail."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

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
    # the reference stream: MindFormers' clean/split/encode over those pieces, in one process, no packing
    reference = []
    for chunk in chunks:
        for para in clean_wikitext(chunk).split("\n\n"):
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
