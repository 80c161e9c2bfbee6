"""Model configurations, models and tokenizers."""

from torchformers.models.configuration_utils import PretrainedConfig
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
from torchformers.models.modeling_utils import PretrainedModel

__all__ = ["LlamaConfig", "LlamaForCausalLM", "PretrainedConfig", "PretrainedModel"]
