"""Weight conversion between Hugging Face, GGUF and native (MindFormers) names, one tensor at a time.

Follows MindFormers `convert_weight.py` / `mindformers/models/llama/convert_weight.py` (HF -> MindSpore
names, optional `--dtype`) and `convert_reversed.py` (native -> HF). One key map per model serves both
directions; the registry below names it. GGUF input is read with Hugging Face names (`gguf_io`) and then
renamed like any Hugging Face checkpoint.

Code outside the library adds its models with `register_key_map(model_name, key_map)`;
`convert_weight.py --register_path DIR` imports such code before converting.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.formats import load_checkpoint, open_checkpoint, write_checkpoint
from torchformers.checkpoint.gguf_io import GGUF_ARCHS, gguf_config
from torchformers.checkpoint.key_map import KeyMap, KeyMapError

__all__ = [
    "DTYPES",
    "MODEL_KEY_MAPS",
    "convert_checkpoint",
    "gguf_to_native",
    "key_map_for",
    "load_native_checkpoint",
    "register_key_map",
]

# Model name (as given to `convert_weight.py --model`) -> its Hugging Face key map, or the
# "module:attribute" naming it. Library entries are resolved lazily: model packages import this
# package, so importing them here would be circular.
MODEL_KEY_MAPS: dict[str, KeyMap | str] = {
    "llama": "torchformers.models.llama.convert_weight:LLAMA_HF_KEY_MAP",
}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Training state found in MindFormers checkpoints (optimizer moments, step counters); it has no
# Hugging Face counterpart and is left out when converting back.
_TRAINING_STATE = re.compile(
    r"^(adam_m\.|adam_v\.|accu_grads\.|global_step$|epoch_num$|step_num$|loss_scale$|global_batch_size$"
    r"|current_iterator_step$|last_overflow_iterator_step$|scale_sense$|learning_rate$|beta1_power$|beta2_power$)"
)


def register_key_map(model_name: str, key_map: KeyMap | str) -> None:
    """Make `model_name` a `convert_weight.py --model` choice, converting with `key_map`.

    `key_map` is a `KeyMap` or a "module:attribute" string naming one (imported when first used).
    Registering a name again with the same map does nothing; another map raises ValueError.
    """
    if not isinstance(key_map, (KeyMap, str)) or (isinstance(key_map, str) and key_map.count(":") != 1):
        raise TypeError(
            f"register_key_map({model_name!r}, ...): expected a KeyMap or 'module:attribute', got {key_map!r}"
        )
    existing = MODEL_KEY_MAPS.get(model_name)
    if existing is not None and existing is not key_map and existing != key_map:
        raise ValueError(f"model {model_name!r} already has a weight key map ({existing!r}); choose another name")
    MODEL_KEY_MAPS[model_name] = key_map


def key_map_for(model: str) -> KeyMap:
    """The Hugging Face <-> native key map registered for `model`."""
    if model not in MODEL_KEY_MAPS:
        raise ValueError(
            f"--model {model!r} has no weight key map; known models: {', '.join(sorted(MODEL_KEY_MAPS))}"
            " (a model outside the library registers its map with register_key_map, which convert_weight.py"
            " runs when --register_path names the model's folder)"
        )
    entry = MODEL_KEY_MAPS[model]
    if isinstance(entry, KeyMap):
        return entry
    module, attr = entry.split(":")
    return getattr(importlib.import_module(module), attr)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _cast(dtype: torch.dtype, target: torch.dtype | None) -> torch.dtype:
    return target if target is not None and dtype.is_floating_point else dtype


def convert_checkpoint(
    input_path: str | Path,
    output_path: str | Path,
    *,
    model: str = "llama",
    dtype: str | torch.dtype | None = None,
    reversed: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any] | None:
    """Convert a checkpoint between Hugging Face and native names, streaming one tensor at a time.

    Args:
        input_path: Hugging Face folder or file (safetensors, sharded index, .bin), a GGUF file, or
            (with `reversed`) a native `.ckpt` / `.safetensors`.
        output_path: `.safetensors` or `.ckpt` for native output; for `reversed`, `.safetensors` (also
            when a folder is given: `<folder>/model.safetensors`) or `.bin` / `.pt`.
        model: key map to use (see `MODEL_KEY_MAPS`).
        dtype: "fp32", "fp16" or "bf16" to cast floating-point tensors; None keeps each tensor's dtype.
        reversed: native -> Hugging Face (MindFormers `--reversed`).

    Returns:
        For GGUF input, the Hugging Face style config read from its metadata; otherwise None.
    """
    key_map = key_map_for(model)
    target = _dtype(dtype)
    source = open_checkpoint(input_path, allow_pickle=allow_pickle)
    output_path = Path(output_path)
    if reversed:
        if source.format == "gguf":
            raise CheckpointError(input_path, "--reversed converts native checkpoints to Hugging Face; got a GGUF file")
        if output_path.suffix == "" or output_path.is_dir():
            output_path.mkdir(parents=True, exist_ok=True)
            output_path = output_path / "model.safetensors"

    def rename(name: str) -> str | None:
        try:
            if reversed:
                return None if _TRAINING_STATE.match(name) else key_map.from_native(name)
            return key_map.to_native(name)
        except KeyMapError as exc:
            raise CheckpointError(input_path, str(exc), tensor=name) from None

    specs = {}
    for name, (dt, shape) in source.specs().items():
        new = rename(name)
        if new is not None:
            specs[new] = (_cast(dt, target), shape)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in source:
            new = rename(name)
            if new is not None:
                yield new, tensor.to(_cast(tensor.dtype, target))
            del tensor  # one tensor in memory at a time

    metadata = {"format": "pt"} if output_path.suffix == ".safetensors" else None
    write_checkpoint(output_path, specs, tensors(), metadata=metadata)
    return gguf_config(input_path) if source.format == "gguf" else None


def gguf_to_native(
    gguf_path: str | Path, output_path: str | Path, *, dtype: str | torch.dtype | None = None
) -> dict[str, Any]:
    """Turn a GGUF model into a native checkpoint (`.safetensors` or `.ckpt`) and return its config.

    Tensors are dequantized, q/k rows put back in rotate-half order and renamed to native names. The
    returned dict has Hugging Face `config.json` keys (`hidden_size`, `num_hidden_layers`, ...,
    `tie_word_embeddings` true when the file has no `output.weight`, in which case the checkpoint has no
    `lm_head.weight` either). The tokenizer in the GGUF metadata is exported separately by
    `torchformers.models.gguf_tokenizer`; `torchformers.checkpoint.gguf_io.gguf_metadata` reads it.
    """
    config = gguf_config(gguf_path)
    convert_checkpoint(gguf_path, output_path, model=GGUF_ARCHS[config["model_type"]].model, dtype=dtype)
    if dtype is not None:
        config["torch_dtype"] = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[
            _dtype(dtype)
        ]
    return config


def load_native_checkpoint(
    path: str | Path, *, model: str = "llama", allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Load any supported checkpoint with native names: Hugging Face / GGUF names are renamed, native kept.

    This is what a model's `load_checkpoint` needs: a MindFormers `.ckpt` comes back untouched, a
    Hugging Face folder or GGUF file comes back renamed.
    """
    key_map = key_map_for(model)
    state = load_checkpoint(path, allow_pickle=allow_pickle)
    out = {}
    for name, tensor in state.items():
        new = name if key_map.is_native(name) or not key_map.is_external(name) else key_map.to_native(name)
        if new in out:
            raise CheckpointError(path, f"two tensors map to the native name {new!r}", tensor=name)
        out[new] = tensor
    return out
