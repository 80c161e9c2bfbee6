"""`LlamaProcessor`: tokenizes text for Llama models (MindFormers' `mindformers/models/llama/llama_processor.py`).

YAML: `processor: {type: LlamaProcessor, return_tensors: ms, tokenizer: {type: LlamaTokenizer, ...}}`.
Calling it returns `{"text": input_ids}` padded to `max_length` ("ms" and "np" give numpy arrays,
"pt" torch tensors).
"""

from __future__ import annotations

from torchformers.models.base_processor import ProcessorMixin
from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["LlamaProcessor"]


@MindFormerRegister.register(MindFormerModuleType.PROCESSOR)
class LlamaProcessor(ProcessorMixin):
    """Args: tokenizer (instance or config block), max_length (128), padding ("max_length"), return_tensors ("ms")."""

    tokenizer_class = "LlamaTokenizer"

    def __init__(
        self,
        tokenizer=None,
        max_length: int = 128,
        padding: bool | str = "max_length",
        return_tensors: str | None = "ms",
    ):
        super().__init__(tokenizer=tokenizer, max_length=max_length, padding=padding, return_tensors=return_tensors)

    def __call__(self, text_input: str | list[str] | None = None, image_input=None) -> dict:
        output = {}
        if text_input is not None:
            if self.tokenizer is None:
                raise TokenizerError("LlamaProcessor has no tokenizer; set processor.tokenizer in the YAML")
            texts = [text_input] if isinstance(text_input, str) else text_input
            output["text"] = self.tokenizer(
                texts, return_tensors=self.return_tensors, max_length=self.max_length, padding=self.padding
            )["input_ids"]
        return output
