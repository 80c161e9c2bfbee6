"""MindFormers' `mindformers/models/auto/`: `AutoConfig`, `AutoModel`, `AutoModelForCausalLM`,
`AutoTokenizer`, `AutoProcessor` over the registry (see `auto_factory`)."""

from torchformers.models.auto.auto_factory import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
)

__all__ = ["AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoProcessor", "AutoTokenizer"]
