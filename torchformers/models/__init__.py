"""Model configurations, models, tokenizers and the Auto classes.

`PreTrainedModel` is MindFormers' spelling of `PretrainedModel` (the same class).
"""

from torchformers.models.auto import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor, AutoTokenizer
from torchformers.models.configuration_utils import PretrainedConfig
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
from torchformers.models.modeling_utils import PretrainedModel

PreTrainedModel = PretrainedModel

__all__ = [
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoProcessor",
    "AutoTokenizer",
    "LlamaConfig",
    "LlamaForCausalLM",
    "PreTrainedModel",
    "PretrainedConfig",
    "PretrainedModel",
]
