"""Parameter-efficient finetuning (MindFormers `mindformers/pet/`): LoRA."""

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

__all__ = [
    "LoRALinear",
    "LoraConfig",
    "get_pet_model",
    "is_lora_config",
    "load_adapters",
    "lora_state_dict",
    "merge_lora",
    "merge_lora_state_dict",
    "save_adapters",
]
