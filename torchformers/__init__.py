"""torchformers: the MindFormers development workflow on PyTorch.

Importing the package registers the library's classes (models, tokenizers, data sets, trainers,
pipelines) so YAML `type:` names resolve.
"""

__version__ = "0.1.0"

from torchformers import dataset, pet, trainer  # noqa: E402,F401  (registers)
from torchformers.generation import GenerationConfig, TextIteratorStreamer, TextStreamer  # noqa: E402
from torchformers.models import PretrainedConfig, PreTrainedModel, PretrainedModel  # noqa: E402
from torchformers.models.auto import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
)
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402
from torchformers.models.llama.llama_processor import LlamaProcessor  # noqa: E402
from torchformers.models.llama.llama_tokenizer import LlamaTokenizer  # noqa: E402
from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast  # noqa: E402
from torchformers.models.tokenization_utils import PreTrainedTokenizer, PretrainedTokenizer  # noqa: E402
from torchformers.models.tokenization_utils_fast import PreTrainedTokenizerFast, PretrainedTokenizerFast  # noqa: E402
from torchformers.parallel.context import ContextConfig, ParallelContextConfig, build_context, init_context  # noqa: E402
from torchformers.pipeline import TextGenerationPipeline, pipeline  # noqa: E402  (the function, as in MindFormers)
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister  # noqa: E402
from torchformers.tools.register.build import (  # noqa: E402
    build_callback,
    build_dataset,
    build_lr,
    build_model,
    build_model_config,
    build_optim,
    build_pipeline,
    build_processor,
    build_tokenizer,
    build_trainer,
)
from torchformers.tools.register.config import MindFormerConfig  # noqa: E402
from torchformers.trainer import Trainer, TrainingArguments  # noqa: E402

__all__ = [
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoProcessor",
    "AutoTokenizer",
    "ContextConfig",
    "GenerationConfig",
    "ParallelContextConfig",
    "PreTrainedModel",
    "TextIteratorStreamer",
    "TextStreamer",
    "TrainingArguments",
    "build_context",
    "init_context",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LlamaProcessor",
    "LlamaTokenizer",
    "LlamaTokenizerFast",
    "MindFormerConfig",
    "MindFormerModuleType",
    "MindFormerRegister",
    "PreTrainedTokenizer",
    "PreTrainedTokenizerFast",
    "PretrainedConfig",
    "PretrainedModel",
    "PretrainedTokenizer",
    "PretrainedTokenizerFast",
    "TextGenerationPipeline",
    "Trainer",
    "build_callback",
    "build_dataset",
    "build_lr",
    "build_model",
    "build_model_config",
    "build_optim",
    "build_pipeline",
    "build_processor",
    "build_tokenizer",
    "build_trainer",
    "pipeline",
]
