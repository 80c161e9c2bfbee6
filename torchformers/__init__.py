"""torchformers: the MindFormers development workflow on PyTorch.

Importing the package registers the library's classes (models, tokenizers, trainers, ...) so YAML
`type:` names resolve.
"""

__version__ = "0.1.0"

from torchformers import trainer  # noqa: E402,F401  (registers)
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

__all__ = [
    "MindFormerConfig",
    "MindFormerModuleType",
    "MindFormerRegister",
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
]
