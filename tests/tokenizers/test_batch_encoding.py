"""Batch encoding: padding (longest / max_length, left / right), truncation, pad_to_multiple_of, tensors, offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchformers.models.tokenization_utils_base import BatchEncoding, TokenizerError

TEXTS = ["Hello world", "The capital of France is Paris.", "a"]


@pytest.fixture(params=["slow", "fast", "llama3"])
def tok(request, llama_slow, llama_fast, llama3):
    return {"slow": llama_slow, "fast": llama_fast, "llama3": llama3}[request.param]


def _unpadded(tok):
    return [tok.encode(t) for t in TEXTS]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_longest(tok, side):
    plain = _unpadded(tok)
    longest = max(map(len, plain))
    out = tok(TEXTS, padding="longest", padding_side=side, return_tensors="pt")
    assert isinstance(out, BatchEncoding)
    assert out["input_ids"].shape == (3, longest) and out["input_ids"].dtype == torch.int64
    for row, ids in enumerate(plain):
        pad = [tok.pad_token_id] * (longest - len(ids))
        mask = [1] * len(ids)
        zeros = [0] * len(pad)
        assert out["input_ids"][row].tolist() == (ids + pad if side == "right" else pad + ids)
        assert out["attention_mask"][row].tolist() == (mask + zeros if side == "right" else zeros + mask)


@pytest.mark.parametrize("return_tensors", ["np", "ms"])
def test_pad_max_length_and_multiple(tok, return_tensors):
    out = tok(TEXTS, padding="max_length", max_length=20, return_tensors=return_tensors)
    assert isinstance(out["input_ids"], np.ndarray) and out["input_ids"].shape == (3, 20)
    assert out["attention_mask"].sum(axis=1).tolist() == [len(ids) for ids in _unpadded(tok)]
    out = tok(TEXTS, padding=True, pad_to_multiple_of=8, return_tensors="np")
    assert out["input_ids"].shape[1] % 8 == 0 and out["input_ids"].shape[1] >= max(map(len, _unpadded(tok)))


def test_truncation(tok):
    plain = _unpadded(tok)
    out = tok(TEXTS, truncation=True, max_length=4)
    # right truncation of BOS + text (no EOS added) keeps the first 4 ids of the untruncated encoding
    assert out["input_ids"] == [ids[:4] for ids in plain]
    # truncation keeps the special tokens the tokenizer adds
    bos = [tok.bos_token_id] if tok.encode("x", add_special_tokens=True)[0] == tok.bos_token_id else []
    assert all(ids[: len(bos)] == bos for ids in out["input_ids"])
    out = tok(TEXTS, truncation=True, max_length=4, padding="max_length", return_tensors="pt")
    assert out["input_ids"].shape == (3, 4)


def test_single_text_gets_a_batch_axis_only_with_tensors(tok):
    assert tok("Hello world")["input_ids"] == tok.encode("Hello world")
    assert tok("Hello world", return_tensors="pt")["input_ids"].shape == (1, len(tok.encode("Hello world")))


def test_ragged_tensors_are_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="padding=True"):
        tok(TEXTS, return_tensors="pt")


def test_bad_arguments_are_clear_errors(tok):
    with pytest.raises(TokenizerError, match="padding='middle'"):
        tok(TEXTS, padding="middle")
    with pytest.raises(TokenizerError, match="return_tensors='tf'"):
        tok(TEXTS, padding=True, return_tensors="tf")
    with pytest.raises(TokenizerError, match="max_length"):
        tok(TEXTS, padding="max_length")


def test_pad_after_tokenizing(tok):
    features = [{"input_ids": ids} for ids in _unpadded(tok)]
    out = tok.pad(features, padding="max_length", max_length=16, return_tensors="pt")
    assert out["input_ids"].shape == (3, 16) and out["attention_mask"].sum().item() == sum(map(len, _unpadded(tok)))


def test_slow_and_fast_batches_are_identical(llama_slow, llama_fast):
    for kwargs in (
        {"padding": True},
        {"padding": "max_length", "max_length": 12, "truncation": True},
        {"padding": True, "padding_side": "left"},
    ):
        a = llama_slow(TEXTS, return_tensors="np", **kwargs)
        b = llama_fast(TEXTS, return_tensors="np", **kwargs)
        assert (a["input_ids"] == b["input_ids"]).all() and (a["attention_mask"] == b["attention_mask"]).all()


def test_offsets_on_the_fast_tokenizer(llama_fast):
    text = "Hello world, 4 ½ months"
    out = llama_fast([text, "Paris"], return_offsets_mapping=True, padding=True)
    assert out.tokens(0) == ["<s>", "▁Hello", "▁world", ",", "▁", "4", "▁", "½", "▁months"]
    # each token's span is the text it covers, the space it stands for ("▁") included
    spans = [text[a:b] for a, b in out["offset_mapping"][0][1:]]
    assert spans == ["Hello", " world", ",", " ", "4", " ", "½", " months"]
    assert out.token_to_chars(0, 0) is None  # BOS comes from no text
    assert out.char_to_token(0, text.index("world")) == 2
    assert out.token_to_chars(0, 2) == (5, 11)
    assert out.char_to_token(1, 0) == 1 and out.tokens(1)[:2] == ["<s>", "▁Paris"]
    assert out["attention_mask"][1] == [1, 1] + [0] * 7


def test_offsets_on_a_slow_tokenizer_is_a_clear_error(llama_slow):
    with pytest.raises(NotImplementedError, match="Python based tokenizers"):
        llama_slow("Hello", return_offsets_mapping=True)
    with pytest.raises(TokenizerError, match="not available when using Python based tokenizers"):
        llama_slow("Hello").char_to_token(0)
