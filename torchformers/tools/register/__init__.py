"""Registry of classes by module type, and the YAML configuration object."""

from torchformers.tools.register.register import MindFormerModuleType, MindFormerRegister, RegistryError

__all__ = ["MindFormerModuleType", "MindFormerRegister", "RegistryError"]
