"""Llama3Tokenizer (external research code, tiktoken) against llama.cpp's Llama 3 vectors and tiktoken."""

from __future__ import annotations

import base64
import json
import os

import pytest
import tiktoken

from tests.tokenizers.helpers import LLAMA3_RESEARCH, random_unicode_strings, reference_vectors
from torchformers.tools.assets import fetch

# Meta's split pattern, as written in meta-llama/llama3 `llama/tokenizer.py`.
META_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501


@pytest.fixture(scope="module")
def meta_ranks() -> dict[bytes, int]:
    with open(fetch("llama3/tokenizer.model"), "rb") as f:
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}


@pytest.fixture(scope="module")
def reference_encoding(meta_ranks):
    return tiktoken.Encoding(
        name="llama3-reference", pat_str=META_PATTERN, mergeable_ranks=meta_ranks, special_tokens={}
    )


def test_reference_vectors(llama3):
    for text, expected in reference_vectors("llama-bpe"):
        assert llama3.encode(text) == expected, repr(text)  # add_bos_token is off, as MindFormers
        assert llama3.decode(llama3.encode(text)) == text, repr(text)


def test_special_tokens(llama3):
    assert llama3.encode("Hello world") == [9906, 1917]
    assert llama3.vocab_size == 128256
    assert llama3.convert_tokens_to_ids(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|reserved_special_token_250|>",
        ]
    ) == [128000, 128001, 128006, 128007, 128009, 128255]
    assert (llama3.bos_token_id, llama3.eos_token_id, llama3.pad_token_id) == (128000, 128001, 128002)
    assert llama3.encode("a<|eot_id|>") == [64, 128009]
    assert llama3.decode([9906, 128009, 1917], skip_special_tokens=True) == "Hello world"
    assert llama3.tokenize("Hello world") == ["Hello", "Ġworld"]


def test_agrees_with_tiktoken_on_random_unicode(llama3, reference_encoding):
    texts = random_unicode_strings(10_000, seed=4321)
    ours = llama3(texts)["input_ids"]
    theirs = reference_encoding.encode_ordinary_batch(texts)
    mismatches = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatches, f"{len(mismatches)} strings differ, e.g. {mismatches[:3]!r}"


def test_loads_tokenizer_json(tmp_path, llama3, llama3_module, meta_ranks):
    encoder = llama3_module.BYTE_ENCODER
    vocab = {"".join(encoder[b] for b in token): rank for token, rank in meta_ranks.items()}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}}), encoding="utf-8")
    from_json = llama3_module.Llama3Tokenizer(str(path))
    for text, expected in reference_vectors("llama-bpe"):
        assert from_json.encode(text) == expected, repr(text)


def test_auto_register_from_a_config_block(monkeypatch):
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

    monkeypatch.setenv("REGISTER_PATH", str(LLAMA3_RESEARCH))
    block = {
        "type": "Llama3Tokenizer",
        "auto_register": "llama3_1_tokenizer.Llama3Tokenizer",
        "vocab_file": str(fetch("llama3/tokenizer.model")),
        "pad_token": "<|reserved_special_token_0|>",
        "model_max_length": 8192,
    }
    tok = MindFormerRegister.get_instance_from_cfg(block, MindFormerModuleType.TOKENIZER)
    assert type(tok).__name__ == "Llama3Tokenizer"
    assert tok.model_max_length == 8192
    assert tok("Hello world")["input_ids"] == [9906, 1917]


def test_not_imported_by_the_library():
    import subprocess
    import sys

    code = (
        "import torchformers.models.tokenization_utils, torchformers.models.llama.llama_processor, sys; "
        "print('llama3_1_tokenizer' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(LLAMA3_RESEARCH.parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
