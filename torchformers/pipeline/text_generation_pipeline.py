"""`TextGenerationPipeline` (MindFormers `mindformers/pipeline/text_generation_pipeline.py`).

preprocess: tokenize each text (chat messages go through the tokenizer's chat template);
forward: `model.generate(ids, **generate_kwargs)`; postprocess: decode prompt + completion with
`skip_special_tokens=True`. Returns one `{'text_generation_text': [text]}` per input. With S-LoRA
adapters, `adapter_id="name"` applies one adapter to every input and `adapter_ids=[...]` one per input.
"""

from __future__ import annotations

from typing import Any

from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["TextGenerationPipeline"]


@MindFormerRegister.register(MindFormerModuleType.PIPELINE, alias="text_generation")
class TextGenerationPipeline:
    """Generate text for one input or a list of inputs, `batch_size` prompts per `generate` call."""

    return_name = "text_generation"

    def __init__(self, model: Any, tokenizer: Any = None, batch_size: int | None = None, **kwargs: Any) -> None:
        if tokenizer is None:
            raise ValueError("text_generation pipeline: a tokenizer is required (tokenizer=...)")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size or 1
        self.generate_defaults = kwargs

    def preprocess(self, text: Any) -> list[int]:
        if isinstance(text, list) and text and isinstance(text[0], dict):  # chat messages
            text = self.tokenizer.apply_chat_template(text, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not isinstance(text, str):
            raise TypeError(f"text_generation pipeline: expected a str or chat messages, got {type(text).__name__}")
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def __call__(
        self, inputs: Any, batch_size: int | None = None, **generate_kwargs: Any
    ) -> list[dict[str, list[str]]]:
        single = isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict))
        items = [inputs] if single else list(inputs)
        batch_size = batch_size or self.batch_size
        kwargs = {**self.generate_defaults, **generate_kwargs}
        if getattr(self.tokenizer, "pad_token_id", None) is not None:
            kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        adapter_ids = kwargs.pop("adapter_ids", None)  # S-LoRA: one adapter name per input
        if adapter_ids is not None and len(adapter_ids) != len(items):
            raise ValueError(f"text_generation pipeline: {len(adapter_ids)} adapter_ids for {len(items)} inputs")
        results = []
        for start in range(0, len(items), batch_size):
            ids = [self.preprocess(text) for text in items[start : start + batch_size]]
            if adapter_ids is not None:
                kwargs["adapter_ids"] = list(adapter_ids[start : start + batch_size])
            sequences = self.model.generate(ids, **kwargs)
            for seq in sequences:
                text = self.tokenizer.decode(list(map(int, seq)), skip_special_tokens=True)
                results.append({f"{self.return_name}_text": [text]})
        return results
