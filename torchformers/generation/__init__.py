"""Generation: `GenerationConfig`, `GenerationMixin.generate`, static KV cache, logits processors,
streamers, the per-model `GenerationState` (KV caches and compiled decode step, kept outside the model),
and the CPU inference optimisation `prepare_for_cpu_inference`."""

from torchformers.generation.cpu_inference import prepare_for_cpu_inference
from torchformers.generation.generation_config import GenerationConfig
from torchformers.generation.kv_cache import StaticKVCache
from torchformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from torchformers.generation.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer
from torchformers.generation.text_generator import GenerateOutput, GenerationMixin, GenerationState, generation_state

__all__ = [
    "BaseStreamer",
    "GenerateOutput",
    "GenerationConfig",
    "GenerationMixin",
    "GenerationState",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "StaticKVCache",
    "TemperatureLogitsWarper",
    "TextIteratorStreamer",
    "TextStreamer",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "generation_state",
    "prepare_for_cpu_inference",
]
