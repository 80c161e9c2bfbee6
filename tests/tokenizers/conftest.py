"""Shared fixtures: real tokenizer files through the asset cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tokenizers.helpers import LLAMA3_RESEARCH
from torchformers.tools.assets import fetch


@pytest.fixture(scope="session")
def llama2_model_file() -> Path:
    return fetch("llama2/tokenizer.model")


@pytest.fixture(scope="session")
def llama_slow(llama2_model_file):
    from torchformers.models.llama.llama_tokenizer import LlamaTokenizer

    return LlamaTokenizer(str(llama2_model_file))


@pytest.fixture(scope="session")
def llama_fast(llama2_model_file):
    from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast

    return LlamaTokenizerFast(vocab_file=str(llama2_model_file))


@pytest.fixture(scope="session")
def llama3_module():
    """The research file imported the way auto_register imports it (plain module name from its folder)."""
    from torchformers.tools.register.register import import_module_from_folder

    return import_module_from_folder(LLAMA3_RESEARCH, "llama3_1_tokenizer")


@pytest.fixture(scope="session")
def llama3(llama3_module):
    return llama3_module.Llama3Tokenizer(str(fetch("llama3/tokenizer.model")))
