"""Prefix tuning and P-Tuning v2 through `model_config.pet_config` (MindFormers `mindformers/pet/`).

MindFormers 1.3.2 `pet/tuners/prefix_tuning_adapter.py` (`PrefixEncoder`) and `ptuning2_adapter.py`
(`Ptuning2Encoder`), after Li & Liang, "Prefix-Tuning" (arXiv 2101.00190) and Liu et al., "P-Tuning v2"
(arXiv 2110.07602). Both learn, for every decoder layer, `P` extra keys and values that each query
attends to before the sequence's own:

    pet_config: {pet_type: prefixtuning, prefix_token_num: 16, mid_dim: 512, dropout_rate: 0.1}
    pet_config: {pet_type: ptuning2, pre_seq_len: 16, prefix_projection: True, projection_dim: 128,
                 dropout_prob: 0.01}

An embedding table `(P, num_layers * 2 * kv_dim)`, optionally passed through `Linear -> tanh -> Linear`
(always for prefix tuning, with `mid_dim`; for P-Tuning v2 when `prefix_projection`, with
`projection_dim`), then dropout, gives layer `i` its keys (block `2i`) and values (block `2i + 1`).
As in MindFormers' Llama (`_cat_prefix`, the prefix mask of zeros): prefix keys are not rotated, every
query sees every prefix position, and the sequence keeps RoPE positions `0..T-1`.

Parameter names are MindFormers' (`mindpet_delta_prefixtuning_embedding.embedding_table`,
`mindpet_delta_prefixtuning_trans.0.weight`, `.0.bias`, `.2.weight`, `.2.bias`, the index buffer
`mindpet_delta_prefixtuning_prefix`; `ptuning2` in place of `prefixtuning`), registered on the model
itself (MindFormers' `PetModel` adds no name prefix), so its checkpoints load and ours load there.
Everything else is frozen, as mindpet's `freeze_delta` does.

The model is not edited: a forward pre-hook on its decoder (`model.<base_model_prefix>`) hands each
layer's attention the prefix through the decoder's `kv_caches` argument (an object whose `update`
returns the keys/values to attend to) and widens the attention mask by `P` visible columns. A full
forward (training, evaluation, `use_past: False`) computes the prefix once per call, with dropout and
gradients; generation through the KV cache computes it once per cache (stored on the cache) and puts
it before the cached keys. `kv_dim` is `n_kv_heads * head_dim`: with grouped-query attention the
prefix has one key/value per KV head (MindFormers sizes it by `num_heads` and then fails on the mask;
with `n_kv_heads == num_heads` the two agree).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchformers.errors import ConfigError
from torchformers.pet.freeze import freeze_all_but
from torchformers.tools.logger import logger

__all__ = ["PREFIX_PET_TYPES", "PrefixConfig", "apply_prefix", "prefix_stem"]

PREFIX_PET_TYPES = ("prefixtuning", "ptuning2")
# MindFormers' config fields per pet_type (pet_config.py `PrefixTuningConfig`, `Ptuning2Config`) and defaults
_FIELDS = {
    "prefixtuning": {"prefix_token_num": 128, "mid_dim": 512, "dropout_rate": 0.1},
    "ptuning2": {"pre_seq_len": 128, "prefix_projection": False, "projection_dim": 128, "dropout_prob": 0.01},
}
_COMMON = {"freeze_include": None, "freeze_exclude": None}


def prefix_stem(pet_type: str) -> str:
    """The name every parameter of `pet_type` starts with (mindpet's `mindpet_delta_<type>`)."""
    return f"mindpet_delta_{pet_type}"


class PrefixConfig:
    """MindFormers' `PrefixTuningConfig` / `Ptuning2Config` in one: prefix length, projection, dropout."""

    def __init__(self, pet_type: str, **fields: Any) -> None:
        pet_type = str(pet_type).lower()
        if pet_type not in _FIELDS:
            raise ConfigError(
                f"model_config.pet_config.pet_type {pet_type!r} is not a prefix method; expected one of "
                f"{list(PREFIX_PET_TYPES)}"
            )
        fields.pop("type", None)
        known = {**_FIELDS[pet_type], **_COMMON}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(
                f"model_config.pet_config: unknown keys {unknown} for pet_type {pet_type}; expected {sorted(known)}"
            )
        values = {**known, **fields}
        self.pet_type = pet_type
        self.values = {k: values[k] for k in _FIELDS[pet_type]}
        if pet_type == "prefixtuning":
            length, projection, dropout = values["prefix_token_num"], values["mid_dim"], values["dropout_rate"]
            keys = ("prefix_token_num", "mid_dim", "dropout_rate")
        else:
            length, dropout = values["pre_seq_len"], values["dropout_prob"]
            projection = values["projection_dim"] if _truth(values["prefix_projection"], "prefix_projection") else None
            keys = ("pre_seq_len", "projection_dim", "dropout_prob")
        for key, value in zip(keys[:2], (length, projection)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"model_config.pet_config.{key} must be a positive integer, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"model_config.pet_config.{keys[2]} must lie in [0, 1), got {dropout!r}")
        self.length, self.projection_dim, self.dropout = int(length), projection, float(dropout)
        self.freeze_include = _patterns(values["freeze_include"])
        self.freeze_exclude = _patterns(values["freeze_exclude"])

    @property
    def stem(self) -> str:
        return prefix_stem(self.pet_type)

    def to_dict(self) -> dict:
        return {"pet_type": self.pet_type, **self.values}

    @classmethod
    def from_any(cls, config: Any) -> PrefixConfig:
        if isinstance(config, PrefixConfig):
            return config
        if hasattr(config, "to_dict") and not isinstance(config, Mapping):
            config = config.to_dict()
        if not isinstance(config, Mapping):
            raise ConfigError(f"model_config.pet_config must be a mapping, got {config!r}")
        config = dict(config)
        return cls(config.pop("pet_type", None), **config)


def _truth(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"model_config.pet_config.{key} must be True or False, got {value!r}")


def _patterns(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class PrefixEmbedding(nn.Module):
    """MindFormers' `PrefixEmbedding` / `Ptuning2Embedding`: one table, `embedding_table` `(P, out)`."""

    def __init__(self, length: int, size: int, dtype: torch.dtype) -> None:
        super().__init__()
        # MindSpore's 'normal' initializer: N(0, 0.01)
        self.embedding_table = nn.Parameter(torch.empty(length, size, dtype=dtype).normal_(0.0, 0.01))


class _Prefix:
    """The prefix keys/values of every layer, from the encoder modules registered on `model`."""

    def __init__(self, model: nn.Module, config: PrefixConfig, num_layers: int, n_kv_heads: int, head_dim: int):
        self.model, self.config = model, config
        self.num_layers, self.n_kv_heads, self.head_dim = num_layers, n_kv_heads, head_dim

    def __call__(self, batch_size: int, training: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer `(key, value)`, each `(B, n_kv_heads, P, head_dim)`."""
        stem, c = self.config.stem, self.config
        x = getattr(self.model, f"{stem}_embedding").embedding_table  # (P, 2 * L * kv_dim): the prefix tokens 0..P-1
        trans = getattr(self.model, f"{stem}_trans", None)
        if trans is not None:
            x = trans(x)
        x = x.view(1, c.length, 2 * self.num_layers, self.n_kv_heads, self.head_dim)
        x = x.expand(batch_size, *x.shape[1:])  # (B, P, 2L, KV, hd); dropout draws per row, as on the tiled batch
        if training and c.dropout > 0:
            x = F.dropout(x, c.dropout, training=True)
        x = x.permute(2, 0, 3, 1, 4)  # (2L, B, KV, P, hd)
        return [(x[2 * i], x[2 * i + 1]) for i in range(self.num_layers)]


class PrefixKV:
    """What a layer's attention attends to: the prefix `(B, KV, P, hd)` before its own keys and values,
    or before the whole cache when it wraps the layer's KV cache (generation)."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, cache: Any = None) -> None:
        self.key, self.value, self.cache = key, value, cache

    def update(self, cache_position, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            key, value = self.cache.update(cache_position, key, value)  # (B, KV, max_length, hd)
        return torch.cat([self.key.to(key.dtype), key], dim=2), torch.cat([self.value.to(value.dtype), value], dim=2)


def _widen(mask: torch.Tensor | None, T: int, P: int, device: torch.device) -> torch.Tensor:
    """The attention mask with `P` visible prefix columns in front; None (plain causal) becomes explicit."""
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]  # (1, 1, T, T)
    visible = True if mask.dtype == torch.bool else 0.0
    return torch.cat([mask.new_full((*mask.shape[:-1], P), visible), mask], dim=-1)


def apply_prefix(model: nn.Module, pet_config: Any) -> nn.Module:
    """Add prefix tuning / P-Tuning v2 to `model` (in place) and freeze the rest; returns `model`."""
    config = PrefixConfig.from_any(pet_config)
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    mc = getattr(model, "config", None)
    takes_caches = isinstance(decoder, nn.Module) and {"kv_caches", "mask"} <= set(
        inspect.signature(decoder.forward).parameters
    )
    if not takes_caches or mc is None:
        raise ConfigError(
            f"model_config.pet_config.pet_type {config.pet_type}: {type(model).__name__} has no decoder taking "
            "kv_caches and mask (model.<base_model_prefix>)"
        )
    if getattr(model, "pet_config", None) is not None:
        raise ConfigError(f"model_config.pet_config: the model already has pet_type {model.pet_config.pet_type}")
    num_layers, num_heads = int(mc.num_layers), int(mc.num_heads)
    n_kv_heads = int(getattr(mc, "kv_heads", None) or getattr(mc, "n_kv_heads", None) or num_heads)
    head_dim = int(getattr(mc, "head_size", None) or mc.hidden_size // num_heads)
    dtype = getattr(mc, "param_init_type", None)
    dtype = dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype
    device = next(model.parameters()).device
    out = num_layers * 2 * n_kv_heads * head_dim
    stem = config.stem
    with torch.device(device):
        model.register_buffer(f"{stem}_prefix", torch.arange(config.length))  # MindFormers' index parameter
        model.add_module(f"{stem}_embedding", PrefixEmbedding(config.length, out, dtype))
        if config.projection_dim is not None:  # MindSpore's Dense initialises as nn.Linear does
            mid = config.projection_dim
            trans = nn.Sequential(nn.Linear(out, mid, dtype=dtype), nn.Tanh(), nn.Linear(mid, out, dtype=dtype))
            model.add_module(f"{stem}_trans", trans)
    prefix = _Prefix(model, config, num_layers, n_kv_heads, head_dim)
    # the decoder's arguments by name (plain dict work, so a compiled decode step traces it)
    parameters = inspect.signature(decoder.forward).parameters
    names = list(parameters)
    defaults = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}

    def add_prefix(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        inputs = {**defaults, **dict(zip(names, args)), **kwargs}
        x = inputs.get("input_embeds")
        x = inputs.get("input_ids") if x is None else x
        B, T = x.shape[0], x.shape[1]
        caches = inputs.get("kv_caches")
        if caches is None:  # a full forward: the prefix now, with dropout and gradients when training
            inputs["kv_caches"] = [PrefixKV(k, v) for k, v in prefix(B, module.training)]
        else:  # generation: once per cache, kept on it
            layers = []
            for cache, (k, v) in zip(caches, _cached_prefix(caches, prefix, B)):
                layers.append(PrefixKV(k, v, cache))
            inputs["kv_caches"] = layers
        inputs["mask"] = _widen(inputs.get("mask"), T, config.length, x.device)
        return (), inputs

    model._pet_prefix = prefix  # per layer (key, value) for a batch size: prefix(batch_size, training)
    model._pet_prefix_hook = decoder.register_forward_pre_hook(add_prefix, with_kwargs=True)
    trainable, total = freeze_all_but(
        model, lambda name: name.startswith(stem), config.freeze_include, config.freeze_exclude, _glob
    )
    model.pet_config = config
    logger.info(
        "%s: %d prefix positions per layer; %d of %d parameters train (%.2f%%)",
        config.pet_type, config.length, trainable, total, 100.0 * trainable / total,
    )  # fmt: skip
    return model


def _cached_prefix(caches: list, prefix: _Prefix, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The prefix for generation: computed (without dropout) when a cache is first used, then read from it."""
    first = caches[0]
    stored = getattr(first, "pet_prefix", None)
    if stored is None or stored[0][0].shape[0] != batch_size:
        with torch.no_grad():
            stored = prefix(batch_size, training=False)
        first.pet_prefix = stored
    return stored


def _glob(pattern: str, name: str) -> bool:
    """mindpet's freeze patterns: `*` matches any text (`'*dense*'`, `'*.bias'`)."""
    return fnmatch.fnmatchcase(name, pattern)
