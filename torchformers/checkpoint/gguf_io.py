"""GGUF model files: tensors dequantized to Hugging Face names and layout, and a Llama config from metadata.

References: ggml `docs/gguf.md` (tensor names `token_embd`, `blk.N.attn_q`, ..., metadata keys
`llama.block_count`, ...), the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`) and llama.cpp
`convert_hf_to_gguf.py`, whose `LlamaModel.permute` reorders the rows of q/k weights from the rotate-half
layout (Hugging Face, MindFormers) to the interleaved one: `w.reshape(n_head, 2, d // n_head // 2, ...)
.swapaxes(1, 2)`. Reading undoes it.

The tokenizer in the metadata is turned into tokenizer files by `torchformers.models.gguf_tokenizer`;
`gguf_metadata` gives it (and anyone else) the plain metadata values.

`GGUF_ARCHS` holds the architectures (`general.architecture`) the library reads: "llama". Code outside
the library adds its own with `register_gguf_arch(name, GGUFArch(...), architectures=[...])`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.key_map import KeyMap, KeyMapError

__all__ = [
    "GGUF_ARCHS",
    "LLAMA_GGUF_KEY_MAP",
    "GGUFArch",
    "gguf_config",
    "gguf_metadata",
    "gguf_specs",
    "iter_gguf",
    "register_gguf_arch",
]

# GGUF tensor names -> Hugging Face names (ggml docs/gguf.md "Standardized tensor names").
LLAMA_GGUF_KEY_MAP = KeyMap(
    {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
        "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
        "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
        "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
        "blk.{}.attn_q.bias": "model.layers.{}.self_attn.q_proj.bias",
        "blk.{}.attn_k.bias": "model.layers.{}.self_attn.k_proj.bias",
        "blk.{}.attn_v.bias": "model.layers.{}.self_attn.v_proj.bias",
        "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
        "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
        "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
        "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
        "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    },
    name="gguf",
)


@dataclass(frozen=True)
class GGUFArch:
    """What reading one GGUF architecture needs.

    Attributes:
        key_map: GGUF tensor names -> Hugging Face names.
        permuted_qk: whether llama.cpp's converter permuted the q/k rows (Llama) or kept Hugging Face's
            order (models it converts without `LlamaModel.permute`).
        ignored: tensors that are not parameters (precomputed RoPE factors).
        architectures: the `architectures` entry of the `config.json` written from the file.
        model: the `convert_weight.py --model` name whose key map renames the Hugging Face names to
            native ones (see `torchformers.checkpoint.convert.MODEL_KEY_MAPS`).
    """

    key_map: KeyMap
    permuted_qk: bool
    ignored: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ("LlamaForCausalLM",)
    model: str = "llama"


GGUF_ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch(LLAMA_GGUF_KEY_MAP, permuted_qk=True, ignored=("rope_freqs.weight",)),
}


def register_gguf_arch(name: str, arch: GGUFArch, *, architectures: Sequence[str] | None = None) -> GGUFArch:
    """Make GGUF files whose `general.architecture` is `name` readable; returns the registered entry.

    `architectures` (e.g. `["MyModelForCausalLM"]`) replaces `arch.architectures` in the `config.json`
    written from such a file. Registering a name again with an equal entry does nothing; a different
    entry raises ValueError.
    """
    if architectures is not None:
        if isinstance(architectures, str):
            architectures = [architectures]
        arch = replace(arch, architectures=tuple(architectures))
    existing = GGUF_ARCHS.get(name)
    if existing is not None and existing != arch:
        raise ValueError(f"GGUF architecture {name!r} is already registered with another entry ({existing})")
    GGUF_ARCHS[name] = arch
    return arch


_KEEP_TYPES = {"F32": torch.float32, "F16": torch.float16}  # stored exactly; all others dequantize to float32


def _reader(path: Path):
    import gguf

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


def _arch(path: Path, meta: dict[str, Any]) -> tuple[str, GGUFArch]:
    name = meta.get("general.architecture")
    if name not in GGUF_ARCHS:
        raise CheckpointError(
            path,
            f"GGUF architecture {name!r} is not supported (supported: {sorted(GGUF_ARCHS)}; code outside the "
            "library adds one with register_gguf_arch, e.g. convert_weight.py --register_path DIR)",
        )
    return name, GGUF_ARCHS[name]


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
    _, arch = _arch(path, meta)
    specs = {}
    for t in reader.tensors:
        hf = _hf_name(path, arch, t.name)
        if hf is not None:
            dtype = _KEEP_TYPES.get(t.tensor_type.name, torch.float32)
            specs[hf] = (dtype, tuple(int(d) for d in reversed(t.shape.tolist())))  # GGUF lists dims fastest-first
    return specs


def iter_gguf(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(Hugging Face name, tensor)` per GGUF tensor: dequantized, q/k rows back in rotate-half order."""
    from gguf.quants import dequantize

    path = Path(path)
    reader = _reader(path)
    meta = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch_name, arch = _arch(path, meta)
    n_head, n_kv = _heads(path, meta, arch_name)
    for t in reader.tensors:
        hf = _hf_name(path, arch, t.name)
        if hf is None:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        kind = t.tensor_type.name
        try:
            if kind in _KEEP_TYPES:
                array = np.array(t.data).reshape(shape)
            else:
                array = dequantize(t.data, t.tensor_type).reshape(shape)
        except (NotImplementedError, ValueError) as exc:
            raise CheckpointError(path, f"cannot dequantize GGUF type {kind} ({exc})", tensor=t.name) from None
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if arch.permuted_qk and t.name.endswith("attn_q.weight"):
            tensor = unpermute_qk(tensor, n_head)
        elif arch.permuted_qk and t.name.endswith("attn_k.weight"):
            tensor = unpermute_qk(tensor, n_kv)
        yield hf, tensor


def gguf_config(path: str | Path) -> dict[str, Any]:
    """A Hugging Face style `LlamaConfig` dict from GGUF metadata (keys as in `config.json`)."""
    path = Path(path)
    reader = _reader(path)
    meta = {k: _field_value(f) for k, f in reader.fields.items() if k != "tokenizer.ggml.merges"}
    arch_name, arch = _arch(path, meta)
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
        "architectures": list(arch.architectures),
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
