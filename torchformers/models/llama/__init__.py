"""Llama: configuration, model, tokenizers, processor, weight-name map and the family's `ModelSpec`.

The names MindFormers exports from `mindformers.models.llama` import from here too.
"""

from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama import LlamaForCausalLM, LlamaModel
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.models.llama.llama_processor import LlamaProcessor
from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast
from torchformers.models.llama.spec import LLAMA_SPEC

__all__ = [
    "LLAMA_HF_KEY_MAP",
    "LLAMA_SPEC",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LlamaModel",
    "LlamaProcessor",
    "LlamaTokenizer",
    "LlamaTokenizerFast",
]
