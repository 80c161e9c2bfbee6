"""MindFormers' names and import paths work unchanged (issue #16, item 2): the import lines of user scripts,
the Auto classes, `TrainingArguments`, the `Trainer` helpers and `init_context`."""

from __future__ import annotations

import logging

import pytest
import yaml

import torchformers
from torchformers.errors import ConfigError
from torchformers.tools.assets import fetch

# MindFormers scripts' import lines, verbatim (torchformers for mindformers)
# isort: off
from torchformers.tools.register import MindFormerConfig, MindFormerRegister, MindFormerModuleType
from torchformers.models.llama import LlamaTokenizer, LlamaTokenizerFast, LlamaProcessor, LlamaConfig, LlamaForCausalLM
from torchformers.models.tokenization_utils import AddedToken
from torchformers.tools import logger
from torchformers.tools.utils import str2bool, check_file
# isort: on

MODEL_CONFIG = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=48,
                    seq_length=32, compute_dtype="float32", param_init_type="float32")  # fmt: skip


def _yaml(tmp_path, with_tokenizer: bool = True):
    data = {
        "model": {
            "model_config": {"type": "LlamaConfig", **MODEL_CONFIG},
            "arch": {"type": "LlamaForCausalLM"},
        }
    }
    if with_tokenizer:
        vocab = str(fetch("llama2/tokenizer.model"))
        data["processor"] = {
            "type": "LlamaProcessor",
            "max_length": 16,
            "tokenizer": {"type": "LlamaTokenizer", "vocab_file": vocab},
        }
    path = tmp_path / "run_llama_tiny.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# -- import lines, verbatim ------------------------------------------------------------------------


def test_register_imports():
    assert MindFormerRegister.get_cls(MindFormerModuleType.CONFIG, "LlamaConfig").__name__ == "LlamaConfig"
    assert MindFormerConfig is torchformers.MindFormerConfig


def test_llama_imports():
    assert LlamaConfig is torchformers.LlamaConfig and LlamaForCausalLM is torchformers.LlamaForCausalLM
    assert LlamaProcessor.__name__ == "LlamaProcessor"
    assert LlamaTokenizer is torchformers.LlamaTokenizer and LlamaTokenizerFast is torchformers.LlamaTokenizerFast


def test_added_token_import():
    tok = LlamaTokenizer(str(fetch("llama2/tokenizer.model")), pad_token=AddedToken("<unk>", normalized=False))
    assert AddedToken("<x>", special=True).content == "<x>"
    assert tok.pad_token == "<unk>" and tok.pad_token_id == 0


def test_logger_object_from_tools(caplog):
    assert isinstance(logger, logging.Logger)
    from torchformers.tools.logger import logger as logger_from_module
    from torchformers.tools.logger import set_log_dir

    assert logger_from_module is logger and callable(set_log_dir)
    logger.addHandler(caplog.handler)
    try:
        logger.info("hello from a MindFormers script")
    finally:
        logger.removeHandler(caplog.handler)
    assert "hello from a MindFormers script" in caplog.text


def test_tools_utils(tmp_path):
    assert str2bool("True") is True and str2bool("false") is False
    with pytest.raises(ConfigError, match="'maybe'"):
        str2bool("maybe")
    file = tmp_path / "a.yaml"
    file.write_text("a: 1\n", encoding="utf-8")
    assert check_file(str(file), "yaml") is None
    with pytest.raises(ConfigError, match="does not exist"):
        check_file(str(tmp_path / "missing.yaml"), "yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        check_file(str(tmp_path))


def test_top_level_names():
    from torchformers.generation import GenerationConfig, TextIteratorStreamer, TextStreamer
    from torchformers.models.modeling_utils import PretrainedModel
    from torchformers.models.tokenization_utils import PretrainedTokenizer
    from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast

    assert torchformers.PreTrainedModel is PretrainedModel is torchformers.PretrainedModel
    assert torchformers.PreTrainedTokenizer is PretrainedTokenizer
    assert torchformers.PreTrainedTokenizerFast is PretrainedTokenizerFast
    assert torchformers.GenerationConfig is GenerationConfig
    assert torchformers.TextStreamer is TextStreamer and torchformers.TextIteratorStreamer is TextIteratorStreamer
    names = ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "AutoProcessor", "TrainingArguments",
             "init_context", "build_context", "ContextConfig", "ParallelContextConfig")  # fmt: skip
    for name in names:
        assert name in torchformers.__all__ and getattr(torchformers, name) is not None
    from torchformers.tools.context import ContextConfig, ParallelContextConfig, build_context, init_context

    assert init_context is torchformers.init_context and build_context is torchformers.build_context
    assert ContextConfig is torchformers.ContextConfig and ParallelContextConfig is torchformers.ParallelContextConfig
