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
    counts = torch.bincount(torch.tensor([t for g, p in zip(got, prompts) for t in g[len(p):].tolist()]))
    return counts.argsort(descending=True)[:n].tolist()


def test_beam_search_matches_transformers_without_eos(pair):
    hf, ours = pair
    prompts = make_prompts()
    # no eos on either side: every hypothesis runs the full 20 tokens
    expected, expected_scores = hf_beams(hf, prompts, eos_token_id=None)
    hf.generation_config.eos_token_id = None
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
    prompts = make_prompts()
    eos = frequent_tokens(ours, prompts, 3)
    kw = dict(eos_token_id=eos, length_penalty=length_penalty, early_stopping=early_stopping)
    expected, expected_scores = hf_beams(hf, prompts, n_ret=3, **kw)
    got, scores = ours_beams(ours, prompts, num_return_sequences=3, **kw)
    assert got == expected
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-4)
    # some hypotheses end on an eos before the 20th token, so eos handling is exercised (a length
    # penalty of 2 favours long hypotheses, so there all returned ones may run the full length)
    assert length_penalty > 1.0 or any(len(g) < len(prompts[i // 3]) + NEW for i, g in enumerate(got))


def test_length_penalty_and_early_stopping_change_the_result(pair):
    _, ours = pair
    prompts = make_prompts()
    eos = frequent_tokens(ours, prompts, 3)
    results = {
        (lp, es): ours_beams(ours, prompts, eos_token_id=eos, length_penalty=lp, early_stopping=es)[0]
        for lp in (-1.0, 2.0)
        for es in (True, "never")
    }
    assert results[(-1.0, "never")] != results[(2.0, "never")]


def test_beam_settings_are_checked(pair):
    _, ours = pair
    prompts = make_prompts()
    with pytest.raises(ConfigError, match="num_return_sequences must be in 1..num_beams \\(4\\), got 5"):
        ours.generate(prompts, max_new_tokens=4, num_beams=4, num_return_sequences=5)
    with pytest.raises(ConfigError, match="num_return_sequences=2 needs beam search"):
        ours.generate(prompts, max_new_tokens=4, num_return_sequences=2)
    with pytest.raises(ConfigError, match="early_stopping must be True, False or 'never', got 'sometimes'"):
        ours.generate(prompts, max_new_tokens=4, num_beams=2, early_stopping="sometimes")
    with pytest.raises(ConfigError, match="num_beams must be a positive integer, got 0"):
        ours.generate(prompts, max_new_tokens=4, num_beams=0)
