"""Fixtures for the data tests: real tokenizers and text through `torchformers.tools.assets`.

Nothing here reads a machine-specific folder: assets come from `fetch`, and a test skips (saying
why) when an asset is not available. `TORCHFORMERS_TEST_LLAMA2_TOKENIZER` may name a Llama 2
`tokenizer.model` while the asset registry has no `llama2/tokenizer.model` entry.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def _fetch_or_skip(name: str) -> Path:
    from torchformers.tools import assets

    if name not in assets.all_assets():
        pytest.skip(f"the asset {name!r} is not listed by any model family's spec nor torchformers.assets.CORPORA")
    try:
        return assets.fetch(name)
    except assets.AssetError as err:
        pytest.skip(f"the asset {name!r} could not be fetched: {err}")


@pytest.fixture(scope="session")
def llama2_model_file() -> Path:
    from torchformers.tools import assets

    override = os.environ.get("TORCHFORMERS_TEST_LLAMA2_TOKENIZER")
    if "llama2/tokenizer.model" not in assets.all_assets() and override and Path(override).is_file():
        return Path(override)
    return _fetch_or_skip("llama2/tokenizer.model")


@pytest.fixture(scope="session")
def llama2_tokenizer(llama2_model_file):
    from torchformers.tools.dataset_preprocess.llama.llama_preprocess import SentencePieceTokenizer

    return SentencePieceTokenizer(llama2_model_file)


@pytest.fixture(scope="session")
def llama2_factory(llama2_model_file):
    from torchformers.tools.dataset_preprocess.llama.llama_preprocess import SentencePieceTokenizer

    return functools.partial(SentencePieceTokenizer, llama2_model_file)


@pytest.fixture(scope="session")
def llama3_model_file() -> Path:
    return _fetch_or_skip("llama3/tokenizer.model")


@pytest.fixture(scope="session")
def wiki_text_file() -> Path:
    return _fetch_or_skip("text/wiki.utf8")


LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


class TiktokenLlama3:
    """Meta's Llama 3 tokenizer (tiktoken ranks + 256 specials) with the small preprocessing interface."""

    def __init__(self, model_file):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(model_file))
        names = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
        names += ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
        names += [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
        self.special_tokens = {name: len(ranks) + i for i, name in enumerate(names)}
        self.enc = tiktoken.Encoding(
            "llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.vocab_file = str(model_file)
        self.bos_token_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_token_id = self.special_tokens["<|end_of_text|>"]
        self.pad_token_id = self.special_tokens["<|reserved_special_token_0|>"]

    def encode(self, text, add_special_tokens=False):
        ids = self.enc.encode(text, allowed_special="all")
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i < self.bos_token_id]
        return self.enc.decode(ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        import jinja2

        text = jinja2.Template(LLAMA3_CHAT_TEMPLATE).render(
            messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=add_generation_prompt
        )
        return self.encode(text) if tokenize else text


@pytest.fixture(scope="session")
def llama3_factory(llama3_model_file):
    return functools.partial(TiktokenLlama3, llama3_model_file)
