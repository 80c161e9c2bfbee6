"""GGUF model files: tensors dequantized to Hugging Face names and layout, and a Llama config from metadata.

References: ggml `docs/gguf.md` (tensor names `token_embd`, `blk.N.attn_q`, ..., metadata keys
`llama.block_count`, ...), the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`) and llama.cpp
`convert_hf_to_gguf.py`, whose `LlamaModel.permute` reorders the rows of q/k weights from the rotate-half
layout (Hugging Face, MindFormers) to the interleaved one: `w.reshape(n_head, 2, d // n_head // 2, ...)
.swapaxes(1, 2)`. Reading undoes it.

The tokenizer in the metadata is turned into tokenizer files by `torchformers.models.gguf_tokenizer`;
`gguf_metadata` gives it (and anyone else) the plain metadata values.

The reader takes the architecture (`general.architecture`) from the registered model families: the
`ModelSpec` whose `gguf.name` is the file's architecture says how to rename its tensors (`GGUFArch`)
and which `architectures` the `config.json` written from it names. A family outside the library makes
its GGUF files readable with its one `MindFormerRegister.register_model_spec(ModelSpec(..., gguf=...))`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.gguf_blocks import GGUFBlocks
from torchformers.checkpoint.key_map import KeyMap, KeyMapError
from torchformers.tools.register import MindFormerRegister, ModelSpec

__all__ = [
    "GGUFArch",
    "gguf_config",
    "gguf_metadata",
    "gguf_model_spec",
    "gguf_specs",
    "iter_gguf",
]


@dataclass(frozen=True)
class GGUFArch:
    """How to read one GGUF architecture; a model family's `ModelSpec.gguf`.

    Attributes:
        name: the `general.architecture` value of the files (llama.cpp's name: "llama", ...).
        key_map: GGUF tensor names -> Hugging Face names.
        permuted_qk: whether llama.cpp's converter permuted the q/k rows (Llama) or kept Hugging Face's
            order (models it converts without `LlamaModel.permute`).
        ignored: tensors that are not parameters (precomputed RoPE factors).
    """

    name: str
    key_map: KeyMap
    permuted_qk: bool
    ignored: tuple[str, ...] = ()


_KEEP_TYPES = {"F32": torch.float32, "F16": torch.float16}  # stored exactly; all others dequantize to float32


def _reader(path: Path):
    import gguf  # start-up time: 0.25 s, paid only by code that reads GGUF files

    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise CheckpointError(path, f"not a readable GGUF file ({exc})") from None


def _field_value(field) -> Any:
    value = field.contents()
    return value


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All metadata key/values of a GGUF file as plain Python values (tokenizer arrays included)."""
    reader = _reader(Path(path))
    return {key: _field_value(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def gguf_model_spec(architecture: str | None, path: str | Path | None = None) -> ModelSpec:
    """The registered model family whose `gguf.name` is `architecture` (a file's `general.architecture`).

    Raises CheckpointError (naming `path`) listing the architectures the registered families read.
    """
    spec = MindFormerRegister.find_model_spec(lambda s: s.gguf is not None and s.gguf.name == architecture)
    if spec is None:
        known = sorted(s.gguf.name for s in MindFormerRegister.model_specs.values() if s.gguf is not None)
        raise CheckpointError(
            path,
            f"GGUF general.architecture {architecture!r} is not supported (supported: {', '.join(known) or 'none'});"
            " a model family makes its GGUF files readable with MindFormerRegister.register_model_spec("
            "ModelSpec(..., gguf=GGUFArch(name, ...))) in a file under --register_path DIR",
        )
    return spec


def _spec(path: Path, meta: dict[str, Any]) -> ModelSpec:
    return gguf_model_spec(meta.get("general.architecture"), path)


def _heads(path: Path, meta: dict, arch: str) -> tuple[int, int]:
    try:
        n_head = int(meta[f"{arch}.attention.head_count"])
    except KeyError:
        raise CheckpointError(path, f"GGUF metadata lacks {arch}.attention.head_count") from None
    return n_head, int(meta.get(f"{arch}.attention.head_count_kv", n_head))


def unpermute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: interleaved RoPE pairs back to rotate-half halves."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _hf_name(path: Path, arch: GGUFArch, name: str) -> str | None:
    if name in arch.ignored:
        return None
    try:
        return arch.key_map.to_native(name)
    except KeyMapError:
        raise CheckpointError(path, "GGUF tensor has no Hugging Face name in the key map", tensor=name) from None


def gguf_specs(path: str | Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Hugging Face names, dtypes and shapes of the tensors `iter_gguf` yields."""
    path = Path(path)
    reader = _reader(path)
    meta = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = _spec(path, meta).gguf
    specs = {}
    for t in reader.tensors:
        hf = _hf_name(path, arch, t.name)
        if hf is not None:
            dtype = _KEEP_TYPES.get(t.tensor_type.name, torch.float32)
            specs[hf] = (dtype, tuple(int(d) for d in reversed(t.shape.tolist())))  # GGUF lists dims fastest-first
    return specs


def iter_gguf(
    path: str | Path, keep_quantized: tuple[str, ...] = ()
) -> Iterator[tuple[str, torch.Tensor | GGUFBlocks]]:
    """Yield `(Hugging Face name, tensor)` per GGUF tensor: dequantized, q/k rows back in rotate-half order.

    A 2-D tensor whose ggml type is in `keep_quantized` (e.g. `("Q4_1", "Q8_0")`) comes as its
    `GGUFBlocks` instead (rows reordered the same way), for layers that compute on the blocks."""
    from gguf.quants import dequantize  # start-up time, as in _reader

    path = Path(path)
    reader = _reader(path)
    meta = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = _spec(path, meta).gguf
    n_head, n_kv = _heads(path, meta, arch.name)
    for t in reader.tensors:
        hf = _hf_name(path, arch, t.name)
        if hf is None:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        kind = t.tensor_type.name
        heads = None
        if arch.permuted_qk and t.name.endswith("attn_q.weight"):
            heads = n_head
        elif arch.permuted_qk and t.name.endswith("attn_k.weight"):
            heads = n_kv
        if kind in keep_quantized and len(shape) == 2:
            blocks = GGUFBlocks(kind, shape, t.data)
            if heads is not None:
                blocks = blocks.take_rows(unpermute_qk(torch.arange(shape[0])[:, None], heads)[:, 0])
            yield hf, blocks
            continue
        try:
            if kind in _KEEP_TYPES:
                array = np.array(t.data).reshape(shape)
            else:
                array = dequantize(t.data, t.tensor_type).reshape(shape)
        except (NotImplementedError, ValueError) as exc:
            raise CheckpointError(path, f"cannot dequantize GGUF type {kind} ({exc})", tensor=t.name) from None
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if heads is not None:
            tensor = unpermute_qk(tensor, heads)
        yield hf, tensor


def gguf_config(path: str | Path) -> dict[str, Any]:
    """A Hugging Face style `LlamaConfig` dict from GGUF metadata (keys as in `config.json`); `architectures`
    is the reading family's `ModelSpec.hf_architectures`."""
    path = Path(path)
    reader = _reader(path)
    meta = {k: _field_value(f) for k, f in reader.fields.items() if k != "tokenizer.ggml.merges"}
    spec = _spec(path, meta)
    arch_name = spec.gguf.name
    n_head, n_kv = _heads(path, meta, arch_name)

    def get(key: str, default: Any = None) -> Any:
        full = f"{arch_name}.{key}"
        if full not in meta and default is None:
            raise CheckpointError(path, f"GGUF metadata lacks {full}")
        return meta.get(full, default)

    hidden = int(get("embedding_length"))
    vocab = meta.get(f"{arch_name}.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise CheckpointError(path, f"GGUF metadata has neither {arch_name}.vocab_size nor tokenizer.ggml.tokens")
        vocab = len(tokens)
    names = {t.name for t in reader.tensors}
    config: dict[str, Any] = {
        "architectures": list(spec.hf_architectures),
        "model_type": arch_name,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(get("rope.dimension_count", hidden // n_head)),
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    for src, dst in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
    ):
        if f"tokenizer.ggml.{src}" in meta:
            config[dst] = int(meta[f"tokenizer.ggml.{src}"])
    scaling = meta.get(f"{arch_name}.rope.scaling.type")
    if scaling not in (None, "none"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(get("rope.scaling.factor", 1.0))}
    return config


def write_config(config: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(config, indent=2) + "\n")
