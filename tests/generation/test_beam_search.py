"""Beam search (`num_beams > 1`) against transformers' `generate(num_beams=..., do_sample=False)`.

Same weights on both sides (the HF-parity pair of tests/models/test_llama_parity.py); the batch has
prompts of different lengths, left-padded with an attention mask for transformers.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.models.test_llama_parity import BASE, build_pair  # noqa: E402
from torchformers.errors import ConfigError  # noqa: E402
from torchformers.generation import GenerateOutput  # noqa: E402

NEW = 20


@pytest.fixture(scope="module")
def pair():
    return build_pair("gqa", seed=1)


def make_prompts(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, BASE["vocab_size"], (n,), generator=g).tolist() for n in (5, 11)]


def hf_beams(hf, prompts, n_ret=1, **kw):
    """transformers' beam search on the left-padded batch: each returned row's new tokens, cut after eos."""
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    out = hf.generate(
        padded, attention_mask=mask, max_new_tokens=NEW, num_beams=4, do_sample=False, pad_token_id=0,
        num_return_sequences=n_ret, output_scores=True, return_dict_in_generate=True, **kw,
    )  # fmt: skip
    eos = kw.get("eos_token_id", [])
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for i, seq in enumerate(out.sequences[:, width:].tolist()):
        cut = next((j + 1 for j, t in enumerate(seq) if t in eos), len(seq))
        rows.append(prompts[i // n_ret] + seq[:cut])
    return rows, out.sequences_scores


def ours_beams(model, prompts, **kw):
    out = model.generate(prompts, max_new_tokens=NEW, num_beams=4, return_dict_in_generate=True, **kw)
    assert isinstance(out, GenerateOutput)
    return [s.tolist() for s in out.sequences], out.sequences_scores


def frequent_tokens(model, prompts, n):
    """Tokens greedy decoding produces often: as eos ids they end hypotheses at varied lengths."""
    got = model.generate(prompts, max_new_tokens=NEW, do_sample=False)
    counts = torch.bincount(torch.tensor([t for g, p in zip(got, prompts) for t in g[len(p) :].tolist()]))
    return counts.argsort(descending=True)[:n].tolist()


def test_beam_search_matches_transformers_without_eos(pair):
    hf, ours = pair
    prompts = make_prompts()
    # no eos on either side: every hypothesis runs the full 20 tokens
    expected, expected_scores = hf_beams(hf, prompts, eos_token_id=None)
    got, scores = ours_beams(ours, prompts, eos_token_id=[])
    assert got == expected
    assert all(len(g) == len(p) + NEW for g, p in zip(got, prompts))
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-4)
    # the recompute path (no KV cache) gives the same beams
    again = ours.generate(prompts, max_new_tokens=NEW, num_beams=4, eos_token_id=[], use_past=False)
    assert [a.tolist() for a in again] == got
    # beam search differs from greedy here (otherwise this test could not tell them apart)
    greedy = ours.generate(prompts, max_new_tokens=NEW, do_sample=False, eos_token_id=[])
    assert [g.tolist() for g in greedy] != got


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -1.0])
def test_eos_length_penalty_and_early_stopping_match_transformers(pair, early_stopping, length_penalty):
    hf, ours = pair
    prompts, eos = eos_case(ours)
    kw = dict(eos_token_id=eos, length_penalty=length_penalty, early_stopping=early_stopping)
    expected, expected_scores = hf_beams(hf, prompts, n_ret=3, **kw)
    got, scores = ours_beams(ours, prompts, num_return_sequences=3, **kw)
    assert got == expected
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-4)
    # some hypotheses end on an eos before the 20th token, so eos handling is exercised (a length
    # penalty of 2 favours long hypotheses, so there all returned ones may run the full length)
    assert length_penalty > 1.0 or any(len(g) < len(prompts[i // 3]) + NEW for i, g in enumerate(got))


def eos_case(model):
    """Prompts and eos ids where early_stopping True, False and "never" all give different beams."""
    prompts = make_prompts(seed=3)
    return prompts, frequent_tokens(model, prompts, 2)


def test_length_penalty_and_early_stopping_change_the_result(pair):
    # the parity cases above can tell the settings apart: each one changes the result here
    _, ours = pair
    prompts, eos = eos_case(ours)
    results = {
        (lp, es): ours_beams(ours, prompts, eos_token_id=eos, length_penalty=lp, early_stopping=es)[0]
        for lp in (1.0, 2.0)
        for es in (True, False, "never")
    }
    assert results[(1.0, True)] != results[(1.0, False)] != results[(1.0, "never")] != results[(1.0, True)]
    assert results[(1.0, True)] != results[(2.0, True)]


def test_beam_settings_are_checked(pair):
    _, ours = pair
    prompts = make_prompts()
    with pytest.raises(ConfigError, match="num_return_sequences must be in 1..num_beams \\(4\\), got 5"):
        ours.generate(prompts, max_new_tokens=4, num_beams=4, num_return_sequences=5)
    with pytest.raises(ConfigError, match="num_return_sequences=2 needs beam search"):
        ours.generate(prompts, max_new_tokens=4, num_return_sequences=2)
    with pytest.raises(ConfigError, match="early_stopping must be True, False, 'never' or None, got 'sometimes'"):
        ours.generate(prompts, max_new_tokens=4, num_beams=2, early_stopping="sometimes")
    with pytest.raises(ConfigError, match="num_beams must be a positive integer, got 0"):
        ours.generate(prompts, max_new_tokens=4, num_beams=0)


def test_rows_with_different_budgets_match_their_own_search(pair):
    # max_length counts each prompt's own tokens: the short prompt gets 20 new tokens, the long one 14;
    # a row that reaches its limit is frozen while the other runs on, as if it had been searched alone
    _, ours = pair
    prompts = make_prompts()
    kw = dict(max_length=25, num_beams=4, eos_token_id=[], num_return_sequences=2)
    batch = [s.tolist() for s in ours.generate(prompts, **kw)]
    alone = [s.tolist() for p in prompts for s in ours.generate([p], **kw)]
    assert batch == alone
    assert [len(s) for s in batch] == [25] * 4


def test_beam_search_ignores_do_sample(pair):
    # MindFormers forces do_sample=False for num_beams > 1 (a LlamaConfig defaults to do_sample=True, top_k=5)
    _, ours = pair
    prompts = make_prompts()
    kw = dict(max_new_tokens=8, num_beams=4, eos_token_id=[])
    sampled = ours.generate(prompts, do_sample=True, top_k=1, seed=0, **kw)  # top_k=1 would force greedy
    plain = ours.generate(prompts, do_sample=False, **kw)
    assert [s.tolist() for s in sampled] == [s.tolist() for s in plain]


@pytest.mark.slow
def test_compiled_decode_gives_the_same_beams(pair):
    # the cache rows are reordered in place, so the compiled step keeps reading the buffers it was built for
    _, ours = pair
    prompts = make_prompts()
    kw = dict(max_new_tokens=NEW, num_beams=4, eos_token_id=[])
    eager = [s.tolist() for s in ours.generate(prompts, **kw)]
    try:
        assert [s.tolist() for s in ours.generate(prompts, compile_decode=True, **kw)] == eager
    finally:
        ours.clear_kv_cache()


@pytest.mark.parametrize("num_beams", [1, 4])
def test_use_past_false_runs_without_the_cache(pair, monkeypatch, num_beams):
    _, ours = pair
    prompts = make_prompts()
    kw = dict(max_new_tokens=6, num_beams=num_beams, eos_token_id=[], do_sample=False)
    with_cache = [s.tolist() for s in ours.generate(prompts, **kw)]

    def no_cache(*args, **kwargs):
        raise AssertionError("the KV cache was used with use_past=False")

    monkeypatch.setattr(ours, "setup_kv_cache", no_cache)
    monkeypatch.setattr(ours, "forward_with_cache", no_cache)
    assert [s.tolist() for s in ours.generate(prompts, use_past=False, **kw)] == with_cache
