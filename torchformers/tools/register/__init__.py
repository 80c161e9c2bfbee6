"""Registry of classes by module type and of model families (`ModelSpec`), and the YAML configuration object."""

from torchformers.tools.register.register import MindFormerModuleType, MindFormerRegister, RegistryError
from torchformers.tools.register.spec import ModelSpec, ParallelSpec

__all__ = ["MindFormerModuleType", "MindFormerRegister", "ModelSpec", "ParallelSpec", "RegistryError"]
