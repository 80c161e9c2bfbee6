"""save_pretrained / from_pretrained in Hugging Face form (JSON) and MindFormers form (YAML); LlamaProcessor."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from tests.tokenizers.helpers import LLAMA3_RESEARCH
from torchformers.tools.assets import fetch

TEXTS = ["Hello world", "<s> and </s> in text", "naïve café 😀"]


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("file_format", ["json", "yaml"])
def test_round_trip(kind, file_format, tmp_path, llama2_model_file):
    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast

    cls = LlamaTokenizer if kind == "slow" else LlamaTokenizerFast
    tok = cls(vocab_file=str(llama2_model_file), add_eos_token=True, model_max_length=64, padding_side="left")
    written = tok.save_pretrained(tmp_path, file_format=file_format)
    assert all(os.path.isfile(p) for p in written)
    assert (tmp_path / "tokenizer.model").is_file()
    if file_format == "json":
        config = json.loads((tmp_path / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == cls.__name__ and config["add_eos_token"] is True
        assert json.loads((tmp_path / "special_tokens_map.json").read_text())["pad_token"] == "<unk>"
    else:
        block = yaml.safe_load((tmp_path / "mindspore_model.yaml").read_text())["processor"]["tokenizer"]
        assert block["type"] == cls.__name__ and block["vocab_file"] == "tokenizer.model"
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.model_max_length == 64 and loaded.padding_side == "left" and loaded.add_eos_token
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.encode(text)[-1] == 2


def test_llama3_round_trip(tmp_path, llama3):
    llama3.save_pretrained(tmp_path)
    loaded = type(llama3).from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == fetch("llama3/tokenizer.model").read_bytes()
    for text in TEXTS:
        assert loaded.encode(text) == llama3.encode(text)


def test_from_pretrained_needs_a_folder(tmp_path):
    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
    from torchformers.models.tokenization_utils_base import TokenizerError

    with pytest.raises(TokenizerError, match="is not a folder"):
        LlamaTokenizer.from_pretrained(tmp_path / "missing")


def test_llama_processor_from_yaml(tmp_path, monkeypatch):
    """The seed's YAML block: processor with a Llama3Tokenizer from research code via auto_register."""
    import torchformers.models.llama.llama_processor  # noqa: F401  (registers LlamaProcessor)
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

    monkeypatch.setenv("REGISTER_PATH", str(LLAMA3_RESEARCH))
    text = f"""
processor:
  return_tensors: ms
  tokenizer:
    model_max_length: 8192
    vocab_file: "{fetch("llama3/tokenizer.model")}"
    pad_token: "<|reserved_special_token_0|>"
    type: Llama3Tokenizer
    auto_register: llama3_1_tokenizer.Llama3Tokenizer
  type: LlamaProcessor
"""
    config = yaml.safe_load(text)["processor"]
    processor = MindFormerRegister.get_instance_from_cfg(config, MindFormerModuleType.PROCESSOR)
    out = processor("Hello world")["text"]
    assert isinstance(out, np.ndarray) and out.shape == (1, 128)
    assert out[0, :3].tolist() == [9906, 1917, 128002]
    assert "auto_register" in config["tokenizer"]  # the caller's config is left as it was


def test_reads_a_folder_written_by_transformers(tmp_path, llama2_model_file):
    """Hugging Face form: a tokenizer.json + tokenizer_config.json folder saved by transformers."""
    transformers = pytest.importorskip("transformers")
    from tests.tokenizers.helpers import random_unicode_strings
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast

    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer.model").write_bytes(llama2_model_file.read_bytes())
    (source / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    try:
        reference = transformers.AutoTokenizer.from_pretrained(str(source))
        reference.save_pretrained(str(tmp_path / "hf"))
    except Exception as err:  # conversion support depends on the transformers version
        pytest.skip(f"transformers cannot convert the sentencepiece model: {err}")
    ours = LlamaTokenizerFast.from_pretrained(tmp_path / "hf")
    texts = TEXTS + random_unicode_strings(500, seed=99)
    assert ours(texts, add_special_tokens=False)["input_ids"] == reference(texts, add_special_tokens=False)["input_ids"]
