"""Llama: configuration, model, tokenizers, weight-name map and the family's `ModelSpec`."""

from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama import LlamaForCausalLM, LlamaModel
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.models.llama.spec import LLAMA_SPEC

__all__ = ["LLAMA_HF_KEY_MAP", "LLAMA_SPEC", "LlamaConfig", "LlamaForCausalLM", "LlamaModel"]
