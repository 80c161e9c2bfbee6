"""Generation: `GenerationConfig`, `GenerationMixin.generate`, static KV cache, logits processors,
streamers, the per-model `GenerationState` (KV caches and compiled decode step, kept outside the model),
the CPU inference optimisation `prepare_for_cpu_inference`, and quantized inference (`quantize_model`)."""

from torchformers.generation.cpu_inference import prepare_for_cpu_inference
from torchformers.generation.generation_config import GenerationConfig
from torchformers.generation.kv_cache import Int8KVCache, StaticKVCache
from torchformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from torchformers.generation.quantization import QuantizationSettings, quantization_settings, quantize_model
from torchformers.generation.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer
from torchformers.generation.text_generator import GenerateOutput, GenerationMixin, GenerationState, generation_state

__all__ = [
    "BaseStreamer",
    "GenerateOutput",
    "GenerationConfig",
    "GenerationMixin",
    "GenerationState",
    "Int8KVCache",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "QuantizationSettings",
    "RepetitionPenaltyLogitsProcessor",
    "StaticKVCache",
    "TemperatureLogitsWarper",
    "TextIteratorStreamer",
    "TextStreamer",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "generation_state",
    "prepare_for_cpu_inference",
    "quantization_settings",
    "quantize_model",
]
