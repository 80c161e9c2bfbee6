"""Llama: configuration, model and weight-name map."""

from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama import LlamaForCausalLM, LlamaModel
from torchformers.models.llama.llama_config import LlamaConfig

__all__ = ["LLAMA_HF_KEY_MAP", "LlamaConfig", "LlamaForCausalLM", "LlamaModel"]
