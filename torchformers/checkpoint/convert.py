"""Weight conversion between Hugging Face, GGUF and native (MindFormers) names, one tensor at a time.

Follows MindFormers `convert_weight.py` / `mindformers/models/llama/convert_weight.py` (HF -> MindSpore
names, optional `--dtype`) and `convert_reversed.py` (native -> HF). One key map per model family serves
both directions: the `hf_key_map` of the family's `ModelSpec` (`MindFormerRegister.get_model_spec`).
GGUF input is read with Hugging Face names (`gguf_io`, through the spec whose `gguf` matches the file)
and then renamed like any Hugging Face checkpoint.

This module imports no model: the library's families are registered because importing any
`torchformers` module runs `torchformers/__init__.py` first; a family outside the library registers
itself with `MindFormerRegister.register_model_spec`, which `convert_weight.py --register_path DIR` runs
by importing the family's files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.formats import load_checkpoint, open_checkpoint, save_checkpoint, write_checkpoint
from torchformers.checkpoint.gguf_io import gguf_config, gguf_model_spec
from torchformers.checkpoint.key_map import KeyMap, KeyMapError
from torchformers.errors import ConfigError
from torchformers.tools.register import MindFormerRegister
from torchformers.utils import dtype_name, to_dtype

__all__ = [
    "convert_checkpoint",
    "gguf_to_native",
    "hf_key_map",
    "key_map_models",
    "load_native_checkpoint",
]

# Training state found in MindFormers checkpoints (optimizer moments, step counters); it has no
# Hugging Face counterpart and is left out when converting back.
_TRAINING_STATE = re.compile(
    r"^(adam_m\.|adam_v\.|accu_grads\.|global_step$|epoch_num$|step_num$|loss_scale$|global_batch_size$"
    r"|current_iterator_step$|last_overflow_iterator_step$|scale_sense$|learning_rate$|beta1_power$|beta2_power$)"
)


def key_map_models() -> list[str]:
    """The registered model families with a Hugging Face key map: the `convert_weight.py --model` choices."""
    return sorted(name for name, spec in MindFormerRegister.model_specs.items() if spec.hf_key_map is not None)


def hf_key_map(model: str) -> KeyMap:
    """The Hugging Face <-> native key map of the model family `model` (its `ModelSpec.hf_key_map`)."""
    spec = MindFormerRegister.model_specs.get(model)
    if spec is None or spec.hf_key_map is None:
        raise ConfigError(
            f"--model {model!r} has no weight key map; known models: {', '.join(key_map_models())} (a model family "
            "outside the library registers its map with MindFormerRegister.register_model_spec(ModelSpec(..., "
            "hf_key_map=...)) in a file under --register_path DIR)"
        )
    return spec.hf_key_map


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
    qkv_concat: bool = False,
) -> dict[str, Any] | None:
    """Convert a checkpoint between Hugging Face and native names, streaming one tensor at a time.

    Args:
        input_path: Hugging Face folder or file (safetensors, sharded index, .bin), a GGUF file, or
            (with `reversed`) a native `.ckpt` / `.safetensors`.
        output_path: `.safetensors` or `.ckpt` for native output; for `reversed`, `.safetensors` (also
            when a folder is given: `<folder>/model.safetensors`) or `.bin` / `.pt`.
        model: the model family whose `hf_key_map` renames (`convert_weight.py --model`).
        dtype: "fp32", "fp16" or "bf16" (any name in `torchformers.utils.DTYPES`) to cast floating-point
            tensors; None keeps each tensor's dtype.
        reversed: native -> Hugging Face (MindFormers `--reversed`).
        qkv_concat: write the family's fused parameters (Llama: `attention.w_qkv`, `feed_forward.w_gate_hidden`
            in MindFormers' `qkv_concat` layout), using the head counts of the `config.json` beside the input.
            The whole checkpoint is held in memory to fuse it. With `reversed`, fused parameters found in
            the input are split the same way (the input needs a `config.json` beside it then).

    Returns:
        For GGUF input, the Hugging Face style config read from its metadata; otherwise None.
    """
    key_map = hf_key_map(model)
    target = to_dtype(dtype, "dtype")
    if Path(input_path).is_file() and Path(input_path).name == "config.json":
        input_path = Path(input_path).parent  # MindFormers takes the Hugging Face folder from its config.json
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

    metadata = {"format": "pt"} if output_path.suffix == ".safetensors" else None
    fused = MindFormerRegister.model_specs[model].fused_weights
    if reversed and fused is not None and fused.has_fused(source.specs()):
        # a qkv_concat checkpoint: split into the separate parameters (head counts from config.json) first
        config = MindFormerRegister.model_specs[model].config_class.from_pretrained(_config_json(input_path))
        split = fused.split_state(dict(source), config)
        state = {new: t.to(_cast(t.dtype, target)) for n, t in split.items() if (new := rename(n)) is not None}
        save_checkpoint(state, output_path, metadata=metadata)
        return None

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

    if qkv_concat:
        if reversed:
            raise CheckpointError(input_path, "--qkv_concat fuses when converting to native names; not with --reversed")
        fused = _fused_weights(model)
        config = MindFormerRegister.model_specs[model].config_class.from_pretrained(_config_json(input_path))
        save_checkpoint(fused.fuse_state(dict(tensors()), config), output_path, metadata=metadata)
        return gguf_config(input_path) if source.format == "gguf" else None
    write_checkpoint(output_path, specs, tensors(), metadata=metadata)
    return gguf_config(input_path) if source.format == "gguf" else None


def _fused_weights(model: str):
    fused = MindFormerRegister.model_specs[model].fused_weights
    if fused is None:
        raise ConfigError(f"--qkv_concat: model family {model!r} has no fused parameters")
    return fused


def _config_json(input_path: str | Path) -> Path:
    """The `config.json` of a Hugging Face folder (or beside a weights file): the head counts to fuse q/k/v."""
    path = Path(input_path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        raise CheckpointError(input_path, f"--qkv_concat needs the model's config.json (head counts); no {config}")
    return config


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
    # the family that reads the file's architecture also names its parameters
    spec = gguf_model_spec(config["model_type"], gguf_path)
    convert_checkpoint(gguf_path, output_path, model=spec.name, dtype=dtype)
    if dtype is not None:
        config["torch_dtype"] = dtype_name(to_dtype(dtype, "dtype"))
    return config


def load_native_checkpoint(
    path: str | Path, *, model: str = "llama", allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Load any supported checkpoint with native names: Hugging Face / GGUF names are renamed, native kept.

    This is what a model's `load_checkpoint` needs: a MindFormers `.ckpt` comes back untouched, a
    Hugging Face folder or GGUF file comes back renamed.
    """
    key_map = hf_key_map(model)
    state = load_checkpoint(path, allow_pickle=allow_pickle)
    out = {}
    for name, tensor in state.items():
        new = name if key_map.is_native(name) or not key_map.is_external(name) else key_map.to_native(name)
        if new in out:
            raise CheckpointError(path, f"two tensors map to the native name {new!r}", tensor=name)
        out[new] = tensor
    return out
