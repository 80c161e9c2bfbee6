"""Parameter-efficient finetuning (MindFormers `mindformers/pet/`): LoRA, S-LoRA."""

from torchformers.pet.lora import (
    LoraConfig,
    LoRALinear,
    get_pet_model,
    is_lora_config,
    load_adapters,
    lora_state_dict,
    merge_lora,
    merge_lora_state_dict,
    save_adapters,
)
from torchformers.pet.slora import SLoRALinear, get_slora_model

__all__ = [
    "LoRALinear",
    "LoraConfig",
    "SLoRALinear",
    "get_pet_model",
    "get_slora_model",
    "is_lora_config",
    "load_adapters",
    "lora_state_dict",
    "merge_lora",
    "merge_lora_state_dict",
    "save_adapters",
]
