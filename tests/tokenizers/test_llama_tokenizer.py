"""LlamaTokenizer (sentencepiece) and LlamaTokenizerFast (tokenizers) against llama.cpp's Llama 2 vectors."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from tests.tokenizers.helpers import random_unicode_strings, reference_vectors

SPM_VECTORS = reference_vectors("llama-spm")


def test_rebuilt_model_is_llama2(llama2_model_file):
    sp = spm.SentencePieceProcessor(model_file=str(llama2_model_file))
    assert sp.get_piece_size() == 32000
    assert sp.encode("Hello world") == [15043, 3186]


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_reference_vectors(kind, llama_slow, llama_fast):
    tok = llama_slow if kind == "slow" else llama_fast
    for text, expected in SPM_VECTORS:
        assert tok.encode(text, add_special_tokens=False) == expected, repr(text)
        # decode(encode(x)) == x, with the BOS the tokenizer adds by default skipped
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text, repr(text)
    batch = tok([t for t, _ in SPM_VECTORS], add_special_tokens=False)["input_ids"]
    assert batch == [ids for _, ids in SPM_VECTORS]


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_mindformers_defaults(kind, llama_slow, llama_fast):
    tok = llama_slow if kind == "slow" else llama_fast
    assert tok.encode("Hello world") == [1, 15043, 3186]  # add_bos_token on, no EOS
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 0)
    assert tok.vocab_size == 32000
    assert tok.encode("a<s>b", add_special_tokens=False) == [263, 1, 289]  # "<s>" in text is the BOS token
    assert tok.decode([1, 15043, 3186, 2], skip_special_tokens=True) == "Hello world"


def test_add_eos_token(llama2_model_file):
    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast

    slow = LlamaTokenizer(str(llama2_model_file), add_eos_token=True)
    fast = LlamaTokenizerFast(vocab_file=str(llama2_model_file), add_eos_token=True)
    assert slow.encode("Hello world") == fast.encode("Hello world") == [1, 15043, 3186, 2]
    fast.add_bos_token = False
    assert fast.encode("Hello world") == [15043, 3186, 2]


def test_slow_and_fast_agree_on_random_unicode(llama_slow, llama_fast, llama2_model_file):
    texts = random_unicode_strings(10_000, seed=1234)
    slow = llama_slow(texts)["input_ids"]
    fast = llama_fast(texts)["input_ids"]
    direct = spm.SentencePieceProcessor(model_file=str(llama2_model_file)).encode(texts)
    mismatches = [t for t, a, b in zip(texts, slow, fast) if a != b]
    assert not mismatches, f"{len(mismatches)} strings differ, e.g. {mismatches[:3]!r}"
    assert all(a == [1] + d for a, d in zip(slow, direct))


def test_fast_from_tokenizer_json(tmp_path, llama_fast, llama2_model_file):
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast

    llama_fast.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = LlamaTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text, expected in SPM_VECTORS[:10]:
        assert loaded.encode(text) == [1] + expected


def test_missing_vocab_file_is_a_clear_error(tmp_path):
    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
    from torchformers.models.tokenization_utils_base import TokenizerError

    with pytest.raises(TokenizerError, match="nothere.model"):
        LlamaTokenizer(str(tmp_path / "nothere.model"))


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_tokens_and_ids(kind, llama_slow, llama_fast, llama2_model_file):
    tok = llama_slow if kind == "slow" else llama_fast
    sp = spm.SentencePieceProcessor(model_file=str(llama2_model_file))
    text = "The llama 🦙 grazes."
    pieces = sp.encode(text, out_type=str)
    assert tok.tokenize(text) == pieces
    assert tok.convert_tokens_to_ids(pieces) == sp.encode(text)
    assert tok.convert_ids_to_tokens(sp.encode(text)) == pieces
    assert tok.convert_tokens_to_string(pieces) == text
    assert tok.batch_decode([tok.encode(text), tok.encode("a b")], skip_special_tokens=True) == [text, "a b"]
    assert len(tok) == 32000 and tok.get_vocab()["▁The"] == sp.piece_to_id("▁The") == 450
