"""Pipelines: `pipeline("text_generation", model=..., tokenizer=...)`."""

from torchformers.pipeline.pipeline import pipeline
from torchformers.pipeline.text_generation_pipeline import TextGenerationPipeline

__all__ = ["TextGenerationPipeline", "pipeline"]
