"""Parameter-efficient finetuning (MindFormers `mindformers/pet/`): LoRA, prefix tuning, P-Tuning v2.

`get_pet_model(model, pet_config)` applies the method `pet_config.pet_type` names (`lora`,
`prefixtuning`, `ptuning2`) to a built model, in place, and freezes everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from torchformers.errors import ConfigError
from torchformers.pet.lora import (
    LoraConfig,
    LoRALinear,
    is_lora_config,
    load_adapters,
    lora_state_dict,
    merge_lora,
    merge_lora_state_dict,
    save_adapters,
)
from torchformers.pet.lora import get_pet_model as _apply_lora
from torchformers.pet.prefix import PREFIX_PET_TYPES, PrefixConfig, apply_prefix, prefix_stem
from torchformers.pet.slora import SLoRALinear, get_slora_model

__all__ = [
    "PET_TYPES",
    "PREFIX_PET_TYPES",
    "LoRALinear",
    "LoraConfig",
    "PrefixConfig",
    "SLoRALinear",
    "get_pet_model",
    "get_slora_model",
    "is_lora_config",
    "is_pet_config",
    "load_adapters",
    "lora_state_dict",
    "merge_lora",
    "merge_lora_state_dict",
    "pet_keys_in",
    "save_adapters",
]

PET_TYPES = ("lora", *PREFIX_PET_TYPES)


def pet_type_of(pet_config: Any) -> str | None:
    if pet_config is None:
        return None
    pet_type = pet_config.get("pet_type") if isinstance(pet_config, Mapping) else getattr(pet_config, "pet_type", None)
    return None if pet_type is None else str(pet_type).lower()


def is_pet_config(pet_config: Any) -> bool:
    """A `pet_config` of a supported method (an empty or absent one is not)."""
    return pet_type_of(pet_config) in PET_TYPES


def get_pet_model(model: nn.Module, pet_config: Any) -> nn.Module:
    """Apply `pet_config` (LoRA, prefix tuning or P-Tuning v2) to `model` in place; returns `model`."""
    pet_type = pet_type_of(pet_config)
    if pet_type == "lora":
        return _apply_lora(model, pet_config)
    if pet_type in PREFIX_PET_TYPES:
        return apply_prefix(model, pet_config)
    raise ConfigError(
        f"model_config.pet_config.pet_type {pet_type!r} is not supported; expected one of {list(PET_TYPES)}"
    )


def pet_keys_in(state: Mapping[str, Any], pet_config: Any) -> bool:
    """Whether a checkpoint already holds the weights `pet_config` adds (then the model is wrapped before loading)."""
    pet_type = pet_type_of(pet_config)
    if pet_type == "lora":
        return any("mindpet_delta_lora_" in k or "tk_delta_lora_" in k for k in state)
    if pet_type in PREFIX_PET_TYPES:
        return any(k.startswith(prefix_stem(pet_type)) for k in state)
    return False
