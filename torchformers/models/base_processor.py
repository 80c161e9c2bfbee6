"""`ProcessorMixin`: the base of processors, which hold a tokenizer (and, for multimodal models, more).

Follows MindFormers' `mindformers/models/base_processor.py`: a processor is built from the YAML
`processor:` block, e.g. `{type: LlamaProcessor, return_tensors: ms, tokenizer: {type: LlamaTokenizer,
vocab_file: ...}}`. A `tokenizer` given as a config block is built through the registry (TOKENIZER),
so `auto_register` inside it works (`Llama3Tokenizer` from `research/llama3_1`).
"""

from __future__ import annotations

from collections.abc import Mapping

from torchformers.models.tokenization_utils_base import PreTrainedTokenizerBase, TokenizerError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["ProcessorMixin", "build_tokenizer_from_config"]


def build_tokenizer_from_config(config) -> PreTrainedTokenizerBase | None:
    """A tokenizer from an instance (returned as is), a `{type: ..., ...}` block, or None."""
    if config is None or isinstance(config, PreTrainedTokenizerBase):
        return config
    if isinstance(config, Mapping) or hasattr(config, "keys"):
        block = dict(config)  # the registry pops auto_register: keep the caller's block intact
        if "type" not in block:
            raise TokenizerError(
                f"processor.tokenizer needs a 'type' (a registered tokenizer class), got keys {sorted(block)}"
            )
        return MindFormerRegister.get_instance_from_cfg(block, MindFormerModuleType.TOKENIZER)
    raise TokenizerError(
        f"processor.tokenizer must be a tokenizer or a config block with 'type', got {type(config).__name__}"
    )


class ProcessorMixin:
    """Holds a tokenizer and the options used when calling it."""

    attributes = ["tokenizer"]
    tokenizer_class: str | None = None

    def __init__(
        self,
        tokenizer=None,
        max_length: int | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
        **kwargs,
    ):
        if kwargs:
            raise TokenizerError(f"{type(self).__name__} got unexpected arguments: {', '.join(sorted(kwargs))}")
        self.tokenizer = build_tokenizer_from_config(tokenizer)
        self.max_length = max_length
        self.padding = padding
        self.return_tensors = return_tensors

    def save_pretrained(self, save_directory: str, save_name: str = "mindspore_model", file_format: str = "yaml"):
        if self.tokenizer is None:
            raise TokenizerError(f"{type(self).__name__} has no tokenizer to save")
        self.tokenizer.processor_class = type(self).__name__
        return self.tokenizer.save_pretrained(save_directory, save_name=save_name, file_format=file_format)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tokenizer={self.tokenizer!r}, max_length={self.max_length}, "
            f"padding={self.padding!r}, return_tensors={self.return_tensors!r})"
        )
