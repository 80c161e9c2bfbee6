"""Tokenizer files rebuilt from GGUF metadata: Llama 2 (sentencepiece), Qwen2 and SmolLM2 (byte-level BPE)."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.tokenizers.helpers import REPO_ROOT, reference_vectors
from torchformers.models.gguf_tokenizer import (
    convert_gguf_tokenizer,
    gguf_to_sentencepiece,
    read_gguf_tokenizer,
    tokenizer_from_gguf,
)
from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.tools.assets import all_assets, fetch
from torchformers.tools.register.register import import_module_from_folder

SMOLLM2 = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_llama2_model_is_byte_identical_to_the_published_rebuild():
    data = gguf_to_sentencepiece(read_gguf_tokenizer(fetch("vocab/ggml-vocab-llama-spm.gguf")))
    assert hashlib.sha256(data).hexdigest() == all_assets()["llama2/tokenizer.model"].sha256


@pytest.fixture(scope="module")
def qwen2_registered():
    """research/qwen2 registers the "qwen2" pre-tokenizer and vocabulary assets when imported."""
    import_module_from_folder(REPO_ROOT / "research" / "qwen2", "qwen2_tokenizer")


@pytest.mark.parametrize("name", ["qwen2", "llama-bpe"])
def test_byte_level_bpe_reference_vectors(name, tmp_path, qwen2_registered):
    tok = tokenizer_from_gguf(fetch(f"vocab/ggml-vocab-{name}.gguf"), tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    vectors = reference_vectors(name)
    got = tok([t for t, _ in vectors], add_special_tokens=False)["input_ids"]
    for (text, expected), ids in zip(vectors, got):
        assert ids == expected, repr(text)
        assert tok.decode(ids) == text or name == "qwen2", repr(text)  # qwen2 normalizes to NFC


def test_llama_spm_gguf_gives_llama_tokenizers(tmp_path):
    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast

    slow = tokenizer_from_gguf(fetch("vocab/ggml-vocab-llama-spm.gguf"), tmp_path, fast=False)
    fast = tokenizer_from_gguf(fetch("vocab/ggml-vocab-llama-spm.gguf"))
    assert isinstance(slow, LlamaTokenizer) and isinstance(fast, LlamaTokenizerFast)
    assert slow.encode("Hello world") == fast.encode("Hello world") == [1, 15043, 3186]
    assert slow.pad_token_id == 0


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2")
    return tokenizer_from_gguf(fetch(SMOLLM2), folder), folder


def test_smollm2_facts(smollm2):
    tok, _ = smollm2
    assert len(tok) == 49152
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.encode("Hello") == tok.encode("Hello", add_special_tokens=False)  # no BOS for SmolLM2
    # SmolLM2's pre-tokenizer puts every digit in its own token
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    text = "The capital of France is Paris. naïve café 😀\n\n  x"
    assert tok.decode(tok.encode(text)) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}])[0] == 1


def test_smollm2_matches_transformers_gguf_loading(smollm2, tmp_path):
    transformers = pytest.importorskip("transformers")
    gguf = fetch(SMOLLM2)
    (tmp_path / gguf.name).symlink_to(gguf)
    try:
        reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf.name)
    except Exception as err:  # transformers' GGUF support depends on its version
        pytest.skip(f"transformers cannot load the GGUF tokenizer: {err}")
    tok, _ = smollm2
    lines = [line for line in fetch("text/wiki.utf8").read_text(encoding="utf-8").split("\n") if line]
    # transformers applies GPT-2's regex without SmolLM2's digit splitting, so compare text without numbers
    lines = [line for line in lines if not re.search(r"\d", line) and not any(c.isnumeric() for c in line)]
    assert len(lines) > 5000
    lines = lines[:4000]
    assert tok(lines, add_special_tokens=False)["input_ids"] == reference(lines, add_special_tokens=False)["input_ids"]


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(TokenizerError, match="not a GGUF file"):
        convert_gguf_tokenizer(bad, tmp_path / "out")


def test_yaml_can_name_the_generic_fast_tokenizer(smollm2):
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

    tok, folder = smollm2
    for name in ("PretrainedTokenizerFast", "PreTrainedTokenizerFast"):
        block = {"type": name, "tokenizer_file": str(folder / "tokenizer.json"), "eos_token": "<|im_end|>"}
        built = MindFormerRegister.get_instance_from_cfg(block, MindFormerModuleType.TOKENIZER)
        assert built.encode("Hello world!") == tok.encode("Hello world!") and built.eos_token_id == 2
