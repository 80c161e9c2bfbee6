"""A GGUF file loaded kept quantized: its 4-bit blocks become int4 layers and its Q8_0 blocks int8 layers,
with no float copy of those weights on the way (`quant_method: gguf`).

`load_gguf_quantized(model, path)` fills a model built on the meta device (or a float one, whose
linear layers it replaces) from a GGUF file:

- `Q4_0`, `Q4_1`, `Q4_K` linear weights -> `Int4WeightOnlyLinear` in groups of 32 (the blocks are
  exactly int4 groups with a scale and a zero point, `torchformers.checkpoint.gguf_blocks`);
- `Q8_0` linear weights -> `Int8GroupedLinear` (int8, one scale per 32 weights: exact);
- a `Q8_0` token embedding -> `QuantizedEmbedding` reading that layer's rows; tied to the output
  head (`tie_word_embeddings`, no `output.weight` in the file), one int8 table serves both;
- every other tensor (norms, F32 / F16 tensors, and the formats above have no layer for: Q5_*,
  Q6_K, ...) is dequantized to float as `iter_gguf` gives it.

The layers compute as the float model with the dequantized weights (to fp32 rounding with
`kernel_dtype=torch.float32`; bf16 activations inside the CPU kernels by default, their fast path).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.gguf_blocks import GROUP, INT4_TYPES, INT8_TYPES, GGUFBlocks, int4_groups, int8_groups
from torchformers.checkpoint.gguf_io import iter_gguf
from torchformers.generation.quantization import (
    Int4WeightOnlyLinear,
    Int8GroupedLinear,
    QuantizationSettings,
    QuantizedEmbedding,
)

__all__ = ["GGUF_SETTINGS", "load_gguf_quantized"]

logger = logging.getLogger(__name__)

GGUF_SETTINGS = QuantizationSettings("gguf", GROUP, quant_method="gguf")


def _layer(blocks: GGUFBlocks, bias: torch.Tensor | None) -> nn.Module:
    if blocks.kind in INT4_TYPES:
        return Int4WeightOnlyLinear.from_groups(*int4_groups(blocks), bias, group_size=GROUP)
    return Int8GroupedLinear(*int8_groups(blocks), bias, group_size=GROUP)


def _float(blocks: GGUFBlocks) -> torch.Tensor:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return torch.from_numpy(dequantize(blocks.data, GGMLQuantizationType[blocks.kind]).reshape(blocks.shape))


def _set(model: nn.Module, name: str, value: torch.Tensor, path: Path) -> None:
    """Copy `value` into the parameter or buffer `name`, materialising it where it is on the meta device."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    target = getattr(module, attr, None)
    if not isinstance(target, torch.Tensor):
        if attr == "bias" and hasattr(module, "_finish"):  # a quantized layer built before its bias came
            module.bias = nn.Parameter(value.float(), requires_grad=False)
            return
        raise CheckpointError(path, f"{type(model).__name__} has no tensor {name}", tensor=name)
    if tuple(target.shape) != tuple(value.shape):
        raise CheckpointError(path, f"shape {tuple(value.shape)} in the file, {tuple(target.shape)} in the model",
                              tensor=name)  # fmt: skip
    with torch.no_grad():
        if target.is_meta:
            new = value.to(target.dtype)
            setattr(module, attr, nn.Parameter(new, requires_grad=False) if isinstance(target, nn.Parameter) else new)
        else:
            target.copy_(value)


@torch.no_grad()
def load_gguf_quantized(model: nn.Module, path: str | Path, kernel_dtype: torch.dtype | None = None) -> nn.Module:
    """Fill `model` (a `PretrainedModel` with an `hf_key_map`, e.g. built on the meta device) from the GGUF
    file `path`, quantized linear weights kept as int4 / int8 layers; returns `model` in eval mode with
    `model.quantization` set. `kernel_dtype`: the activation dtype of the CPU kernels (None: bf16).

    Raises CheckpointError naming the file for a tensor the model lacks or a model tensor the file lacks.
    """
    path = Path(path)
    model.eval()
    key_map = getattr(model, "hf_key_map", None)
    config = getattr(model, "config", None)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    embedding = getattr(getattr(model, "model", None), "tok_embeddings", None)
    embedding_name = "model.tok_embeddings.embedding_weight"
    dtype = getattr(config, "param_init_type", torch.float32)
    counts = {"int4": 0, "int8": 0, "float": 0}
    head_loaded = False
    for hf, value in iter_gguf(path, keep_quantized=INT4_TYPES + INT8_TYPES):
        name = key_map.to_native(hf) if key_map is not None and key_map.is_external(hf) else hf
        module_name, _, attr = name.rpartition(".")
        if isinstance(value, GGUFBlocks):
            module = model.get_submodule(module_name) if module_name else model
            if name == embedding_name and embedding is not None:
                if value.kind in INT8_TYPES:
                    table = _layer(value, None)
                    model.model.tok_embeddings = QuantizedEmbedding(table, tied, dtype=dtype)
                    if tied:
                        model.lm_head = table
                        head_loaded = True
                    counts["int8"] += 1
                    continue
                if tied:  # 4-bit embedding: the head computes on the blocks, lookups read a float table
                    model.lm_head = _layer(value, None)
                    head_loaded = True
                    counts["int4"] += 1
                _set(model, name, _float(value), path)
                counts["float"] += 1
                continue
            if attr == "weight" and isinstance(module, (nn.Linear, Int4WeightOnlyLinear, Int8GroupedLinear)):
                bias = getattr(module, "bias", None)
                bias = None if bias is None or bias.is_meta else bias
                parent_name, _, child = module_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, _layer(value, bias))
                head_loaded |= name == "lm_head.weight"
                counts["int4" if value.kind in INT4_TYPES else "int8"] += 1
                continue
            value = _float(value)
        _set(model, name, value, path)
        head_loaded |= name == "lm_head.weight"
        counts["float"] += 1
    if tied and not head_loaded and type(getattr(model, "lm_head", None)) is nn.Linear:
        model.tie_weights()  # a float embedding: the head shares it
    missing = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta and not _released(model, n)]
    if missing:
        raise CheckpointError(path, f"the GGUF file has no tensor for {', '.join(missing[:10])}")
    meta_buffers = any(b.is_meta for n, b in model.named_buffers() if not _released(model, n))
    if meta_buffers and hasattr(model, "init_buffers"):
        model.init_buffers("cpu")  # the RoPE tables of a model built on the meta device
    if kernel_dtype is not None:
        for module in model.modules():
            if isinstance(module, (Int4WeightOnlyLinear, Int8GroupedLinear)):
                module.kernel_dtype = kernel_dtype
    model.quantization = GGUF_SETTINGS
    logger.info("%s kept quantized: %d int4 layers, %d int8 layers, %d float tensors", path.name,
                counts["int4"], counts["int8"], counts["float"])  # fmt: skip
    return model


def _released(model: nn.Module, name: str) -> bool:
    """Whether `name` is a portable tensor an int4 layer released for its kernel layout."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return isinstance(module, Int4WeightOnlyLinear) and attr in module._PORTABLE and module._int4_packed is not None
