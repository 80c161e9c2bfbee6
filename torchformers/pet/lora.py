"""LoRA through `model_config.pet_config` (MindFormers `mindformers/pet/`, spec §9.4).

`pet_config: {pet_type: lora, lora_rank: 16, lora_alpha: 16, lora_dropout: 0.05,
target_modules: '.*wq|.*wk|.*wv|.*wo'}` replaces every `nn.Linear` whose module name matches
`target_modules` (`re.match`, as MindFormers) with a `LoRALinear`: the base weight keeps its name
(`<linear>.weight`), the adapters are `<linear>.mindpet_delta_lora_a` `(rank, in)` and
`<linear>.mindpet_delta_lora_b` `(out, rank)` (MindFormers' names), and
`y = x W^T + b + dropout(x) A^T B^T * (alpha / rank)`. A starts normal (std 0.01, MindSpore's
'normal'), B at zero, so the wrapped model starts equal to the base one. Everything else is frozen
(`freeze_exclude` patterns stay trainable).

Adapters save and load on their own (`save_adapters` / `load_adapters`: safetensors with the LoRA
config in the metadata, loaded through the one weight loader `checkpoint.loader.load_state_into`;
a folder also gets `adapter_config.json` with PEFT's `r`, `lora_alpha`, `lora_dropout` and
`target_modules`, so it serves as an S-LoRA adapter, `pet/slora.py`);
`merge_lora` folds `W + B A * scale` into plain `nn.Linear`s and
`merge_lora_state_dict` does the same on checkpoint dicts without a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from torchformers.checkpoint.loader import LoadReport, load_state_into, read_weights
from torchformers.errors import ConfigError
from torchformers.pet.freeze import freeze_all_but
from torchformers.tools.logger import logger

__all__ = [
    "LORA_A",
    "LORA_B",
    "LoRALinear",
    "LoraConfig",
    "get_pet_model",
    "load_adapters",
    "lora_state_dict",
    "merge_lora",
    "merge_lora_state_dict",
    "save_adapters",
]

LORA_A = "mindpet_delta_lora_a"
LORA_B = "mindpet_delta_lora_b"
ADAPTER_FILE = "adapter_model.safetensors"  # what `save_adapters` writes into a folder
_OLD_NAMES = {"tk_delta_lora_a": LORA_A, "tk_delta_lora_b": LORA_B}


class LoraConfig:
    """MindFormers' `LoraConfig` fields; unknown keys are errors naming `pet_config`."""

    def __init__(
        self,
        pet_type: str = "lora",
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.01,
        lora_a_init: str = "normal",
        lora_b_init: str = "zero",
        param_init_type=None,
        compute_dtype=None,
        target_modules: str | None = None,
        exclude_layers: str | None = None,
        freeze_include=None,
        freeze_exclude=None,
        **unknown,
    ) -> None:
        unknown.pop("type", None)
        if unknown:
            raise ConfigError(f"model_config.pet_config: unknown keys {sorted(unknown)} for pet_type lora")
        if str(pet_type).lower() != "lora":
            raise ConfigError(f"model_config.pet_config.pet_type {pet_type!r} is not supported; expected 'lora'")
        if int(lora_rank) < 1:
            raise ConfigError(f"model_config.pet_config.lora_rank must be >= 1, got {lora_rank!r}")
        if not 0 <= float(lora_dropout) < 1:
            raise ConfigError(f"model_config.pet_config.lora_dropout must lie in [0, 1), got {lora_dropout!r}")
        if not target_modules:
            raise ConfigError("model_config.pet_config.target_modules is empty; e.g. '.*wq|.*wk|.*wv|.*wo'")
        for key, pattern in (("target_modules", target_modules), ("exclude_layers", exclude_layers)):
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ConfigError(
                        f"model_config.pet_config.{key} {pattern!r} is not a valid regex: {err}"
                    ) from None
        self.pet_type = "lora"
        self.lora_rank, self.lora_alpha, self.lora_dropout = int(lora_rank), float(lora_alpha), float(lora_dropout)
        self.lora_a_init, self.lora_b_init = lora_a_init, lora_b_init
        self.target_modules, self.exclude_layers = target_modules, exclude_layers
        self.freeze_include = _patterns(freeze_include)
        self.freeze_exclude = _patterns(freeze_exclude)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_rank

    def to_dict(self) -> dict:
        return {
            "pet_type": self.pet_type,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "exclude_layers": self.exclude_layers,
        }

    @classmethod
    def from_any(cls, config) -> LoraConfig:
        if isinstance(config, LoraConfig):
            return config
        if isinstance(config, Mapping):
            return cls(**dict(config))
        if hasattr(config, "to_dict"):
            return cls(**config.to_dict())
        raise ConfigError(f"model_config.pet_config must be a mapping, got {config!r}")


def _patterns(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class LoRALinear(nn.Linear):
    """`nn.Linear` plus a rank-r update; shares the base weight and bias with the linear it replaces."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.scaling = rank, alpha / rank
        dtype, device = base.weight.dtype, base.weight.device
        setattr(self, LORA_A, nn.Parameter(torch.empty(rank, self.in_features, dtype=dtype, device=device)))
        setattr(self, LORA_B, nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=device)))
        nn.init.normal_(getattr(self, LORA_A), std=0.01)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        a, b = getattr(self, LORA_A), getattr(self, LORA_B)
        return out + F.linear(F.linear(self.lora_dropout(x), a), b) * self.scaling

    def delta(self) -> torch.Tensor:
        """`B A * scale`, the change this adapter makes to `weight`, in fp32."""
        return (getattr(self, LORA_B).float() @ getattr(self, LORA_A).float()) * self.scaling

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def get_pet_model(model: nn.Module, pet_config) -> nn.Module:
    """Wrap the target linears of `model` with LoRA (in place) and freeze the rest; returns `model`."""
    config = LoraConfig.from_any(pet_config)
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or isinstance(module, LoRALinear):
            continue
        if not re.match(config.target_modules, name):
            continue
        if config.exclude_layers and re.match(config.exclude_layers, name):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, config.lora_rank, config.lora_alpha, config.lora_dropout))
        replaced.append(name)
    if not replaced:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ConfigError(
            f"model_config.pet_config.target_modules {config.target_modules!r} matches no nn.Linear of "
            f"{type(model).__name__} (linear layers are named like {linears})"
        )
    trainable, total = freeze_all_but(
        model, lambda name: name.endswith((LORA_A, LORA_B)), config.freeze_include, config.freeze_exclude,
        lambda pattern, name: re.match(pattern, name) is not None,
    )  # fmt: skip
    model.pet_config = config
    logger.info(
        "LoRA on %d linears (rank %d, alpha %g): %d of %d parameters train (%.2f%%)",
        len(replaced), config.lora_rank, config.lora_alpha, trainable, total, 100.0 * trainable / total,
    )  # fmt: skip
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n.endswith((LORA_A, LORA_B))}


def save_adapters(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write only the adapter weights (safetensors: every `mindpet_delta_*` tensor, LoRA or prefix), the
    pet config in the file's metadata. `state` gives them already gathered (a sharded model's full tensors)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / ADAPTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "pet_config", None)
    metadata = {"pet_config": json.dumps(config.to_dict())} if config is not None else None
    if state is None:
        state = model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items() if _is_adapter(k)}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    if isinstance(config, LoraConfig):  # a LoRA adapter folder also serves as an S-LoRA adapter (pet/slora.py)
        targets = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, LoRALinear)})
        adapter_config = {"r": config.lora_rank, "lora_alpha": config.lora_alpha,
                          "lora_dropout": config.lora_dropout, "target_modules": targets}  # fmt: skip
        config_path = path.with_name("adapter_config.json")
        tmp = config_path.with_name(f".{config_path.name}.tmp")
        tmp.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
        tmp.replace(config_path)
    return path


def _rename_old(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for old, new in _OLD_NAMES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def load_adapters(model: nn.Module, path: str | Path) -> LoadReport:
    """Load adapter weights saved by `save_adapters` (or a full checkpoint: only its adapters are read)
    through the one loader; missing, unexpected or mis-shaped adapters raise `CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not any(_is_adapter(n) for n in model.state_dict()):
        raise ConfigError(f"load_adapters({path}): the model has no adapters (apply pet_config first)")
    state = {k: v for k, v in _rename_old(read_weights(path)).items() if _is_adapter(k)}
    return load_state_into(model, state, source=str(path), only=_is_adapter)


def _is_adapter(name: str) -> bool:
    """A tensor a pet method adds (mindpet's `mindpet_delta_<method>` names: LoRA, prefix tuning, P-Tuning v2)."""
    return "mindpet_delta_" in name


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (`W + B A * scale`) and put plain `nn.Linear`s back.

    A weight shared with another module (a tied `lm_head`) is copied first, so the other user keeps
    the base weight; the merged model then has untied weights."""
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        if uses.get(id(module.weight), 0) > 1:
            logger.warning("merge_lora: %s.weight is tied to another weight; the merged copy is untied", name)
            module.weight = nn.Parameter(module.weight.detach().clone())
            if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
                model.config.tie_word_embeddings = False
        with torch.no_grad():
            module.weight.add_(module.delta().to(module.weight.dtype))
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for param in model.parameters():
        param.requires_grad_(True)
    if hasattr(model, "pet_config"):
        del model.pet_config
    return model


def merge_lora_state_dict(state: dict[str, torch.Tensor], pet_config) -> dict[str, torch.Tensor]:
    """A checkpoint dict with adapters -> plain weights: `<x>.weight += B A * alpha/rank`, adapters dropped."""
    config = LoraConfig.from_any(pet_config)
    state = _rename_old(state)
    out = {k: v for k, v in state.items() if not k.endswith((LORA_A, LORA_B))}
    for key in state:
        if not key.endswith(LORA_A):
            continue
        prefix = key[: -len(LORA_A)]
        weight_key = prefix + "weight"
        if weight_key not in out or prefix + LORA_B not in state:
            raise ConfigError(f"merge_lora_state_dict: {key} has no matching {weight_key} / {prefix + LORA_B}")
        a, b, w = state[key].float(), state[prefix + LORA_B].float(), out[weight_key]
        out[weight_key] = (w.float() + (b @ a) * config.scaling).to(w.dtype)
    return out


def is_lora_config(pet_config) -> bool:
    if pet_config is None:
        return False
    pet_type = pet_config.get("pet_type") if isinstance(pet_config, Mapping) else getattr(pet_config, "pet_type", None)
    return pet_type is not None and str(pet_type).lower() == "lora"
