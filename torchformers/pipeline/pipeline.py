"""`pipeline(task, model, tokenizer)` (MindFormers `mindformers/pipeline/pipeline.py`).

The task name is looked up in the PIPELINE registry ("text_generation" -> `TextGenerationPipeline`).
`model` is a built model or a folder that `PretrainedModel.from_pretrained` reads.
"""

from __future__ import annotations

import os
from typing import Any

import torchformers.pipeline.text_generation_pipeline  # noqa: F401  (registers "text_generation")
from torchformers.models.modeling_utils import PretrainedModel
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["pipeline"]


def pipeline(task: str | None = None, model: Any = None, tokenizer: Any = None, backend: str = "pt", **kwargs: Any):
    """Build the pipeline registered as `task`; `kwargs` become default generation arguments."""
    if task is None:
        raise ValueError("pipeline: task is required, e.g. pipeline('text_generation', model=..., tokenizer=...)")
    if model is None:
        raise ValueError(f"pipeline({task!r}): model is required")
    if isinstance(model, (str, os.PathLike)):
        model = PretrainedModel.from_pretrained(model)
    pipeline_cls = MindFormerRegister.get_cls(MindFormerModuleType.PIPELINE, task)
    return pipeline_cls(model=model, tokenizer=tokenizer, **kwargs)
