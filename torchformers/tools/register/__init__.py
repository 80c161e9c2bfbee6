"""Registry of classes by module type and of model families (`ModelSpec`), and the YAML configuration object.

`from torchformers.tools.register import MindFormerConfig, MindFormerRegister, MindFormerModuleType` works as
MindFormers' `mindformers.tools.register` import line does.
"""

from torchformers.tools.register.config import MindFormerConfig
from torchformers.tools.register.register import MindFormerModuleType, MindFormerRegister, RegistryError
from torchformers.tools.register.spec import ModelSpec, ParallelSpec

__all__ = [
    "MindFormerConfig",
    "MindFormerModuleType",
    "MindFormerRegister",
    "ModelSpec",
    "ParallelSpec",
    "RegistryError",
]
