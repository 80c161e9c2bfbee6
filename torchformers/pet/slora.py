"""S-LoRA: many LoRA adapters on one base model, chosen per input row (MindFormers `pet_type: slora`).

Follows MindFormers v1.3.2 (`mindformers/pet/models/slora.py`, `pet/tuners/slora_adapter.py`,
`trainer/utils.py:load_slora_ckpt`, `docs/feature_cards/Text_Generator.md` "SLoRA推理"):

- `pet_config: {pet_type: slora, adapter_path: lora_adapter.json}` (MindFormers 1.5+: the folder
  holding `lora_adapter.json`); the JSON maps adapter names to folders,
  `{"adapter1": "/path/to/adapter1", ...}`. Each folder holds `adapter_config.json` (PEFT's keys: `r`,
  `lora_alpha`, `lora_dropout`, `target_modules`, a list of module names such as `["wq", "wv"]`,
  `use_rslora`) and the adapter weights: MindFormers' `adapter_model.ckpt` (`<module>.lora_a`
  `(r, in)`, `<module>.lora_b` `(out, r)`; the LoRA finetune names `<module>.mindpet_delta_lora_a/b`
  are read too) or `adapter_model.safetensors` (what `save_adapters` writes).
- Every `nn.Linear` whose name `re.match`es `.*<module>` for a module of any adapter's
  `target_modules` becomes an `SLoRALinear` holding all adapters stacked, unmerged:
  `lora_a (N + 1, r_max, in)`, `lora_b (N + 1, out, r_max)`; row 0 is zeros (the base model), adapter
  `i` of the JSON is row `i + 1`, smaller ranks are zero-padded, an adapter without a module has zeros
  there. A row of the batch with adapter `k` computes `x W^T + b + (x A_k^T) B_k^T`.
- Generation picks the adapter of each row by name: `generate(..., adapter_id="adapter1")` for every
  row (what `run_mindformer.py --adapter_id` passes) or `adapter_ids=[name_or_None, ...]` one per row
  (MindFormers' `ModelRunner`). `None`, or a name the JSON does not hold, runs the base model for that
  row with a warning, as in MindFormers.

Each adapter keeps its own scaling, `lora_alpha / r` (`/ sqrt(r)` with `use_rslora`), folded into its
`lora_b` rows, as MindFormers 1.5+ does (`trainer/utils.py:calculate_scaling`); MindFormers 1.3.2
scaled every adapter by the first adapter's `lora_alpha` over the largest rank, which agrees when the
adapters share `r` and `lora_alpha`.

The base path stays one `F.linear`: with no adapter selected (all rows base, or outside `generate`)
an `SLoRALinear` adds nothing; with adapters it gathers each row's A and B and adds two batched
matmuls of rank `r_max`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchformers.checkpoint.loader import read_weights
from torchformers.errors import CheckpointError, ConfigError
from torchformers.generation import generation_state
from torchformers.tools.logger import logger

__all__ = ["AdapterRows", "SLoRALinear", "SLoraConfig", "get_slora_model", "is_slora_config", "read_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_JSON = "lora_adapter.json"  # the name MindFormers 1.5+ looks for in an adapter_path folder
WEIGHT_FILES = ("adapter_model.ckpt", "adapter_model.safetensors")  # MindFormers' name first
# suffixes of adapter weights: MindFormers' S-LoRA names, its LoRA finetune names, the old MindPet names
_A_SUFFIXES = (".lora_a", ".mindpet_delta_lora_a", ".tk_delta_lora_a")
_B_SUFFIXES = (".lora_b", ".mindpet_delta_lora_b", ".tk_delta_lora_b")
_KEY = "model.model_config.pet_config.adapter_path"


def is_slora_config(pet_config) -> bool:
    if pet_config is None:
        return False
    pet_type = pet_config.get("pet_type") if isinstance(pet_config, Mapping) else getattr(pet_config, "pet_type", None)
    return pet_type is not None and str(pet_type).lower() == "slora"


class AdapterConfig:
    """One adapter: its name, folder, rank, scaling and target module patterns."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.folder = name, folder
        path = folder / ADAPTER_CONFIG
        if not path.is_file():
            raise ConfigError(
                f"{_KEY}: adapter {name!r} -> {folder}: {ADAPTER_CONFIG} not found (each adapter folder "
                f"holds {ADAPTER_CONFIG} with r, lora_alpha, target_modules, and {' or '.join(WEIGHT_FILES)})"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a readable JSON file ({err})") from None
        missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in raw]
        if missing:
            raise ConfigError(f"{path}: keys {missing} missing; expected r, lora_alpha and target_modules")
        try:
            self.rank, self.alpha = int(raw["r"]), float(raw["lora_alpha"])
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: r {raw['r']!r} and lora_alpha {raw['lora_alpha']!r} must be numbers") from None
        if self.rank < 1:
            raise ConfigError(f"{path}: r must be >= 1, got {raw['r']!r}")
        self.use_rslora = bool(raw.get("use_rslora", False))
        targets = raw["target_modules"]
        if isinstance(targets, str):  # PEFT also allows one regex
            self.patterns = [targets]
        elif isinstance(targets, Sequence) and targets and all(isinstance(t, str) for t in targets):
            self.patterns = [".*" + t for t in targets]  # MindFormers: '.*' + each module name
        else:
            raise ConfigError(f"{path}: target_modules must be a list of module names, got {targets!r}")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"{path}: target_modules entry {pattern!r} is not a valid regex: {err}") from None

    @property
    def scaling(self) -> float:
        """`lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora` (PEFT; MindFormers 1.5+)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


class SLoraConfig:
    """`pet_config` of `pet_type: slora`: `adapter_path`, the JSON of adapter names -> folders."""

    def __init__(self, pet_type: str = "slora", adapter_path: str | None = None, **unknown) -> None:
        unknown.pop("type", None)
        if unknown:
            raise ConfigError(
                f"model.model_config.pet_config: unknown keys {sorted(unknown)} for pet_type slora "
                "(expected adapter_path; rank, alpha and target modules come from each adapter's adapter_config.json)"
            )
        if str(pet_type).lower() != "slora":
            raise ConfigError(f"model.model_config.pet_config.pet_type {pet_type!r}: expected 'slora'")
        if not adapter_path:
            raise ConfigError(
                f"{_KEY} is empty; pass --{_KEY} path/to/lora_adapter.json, a JSON mapping adapter names to "
                "LoRA folders"
            )
        path = Path(adapter_path)
        if path.is_dir():  # MindFormers 1.5+: the folder holding lora_adapter.json
            path = path / ADAPTER_JSON
        if not path.is_file():
            raise ConfigError(
                f"{_KEY} {str(adapter_path)!r}: no such file; expected a JSON of adapter name -> folder "
                f"(or a folder holding {ADAPTER_JSON})"
            )
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{_KEY} {str(adapter_path)!r}: not a readable JSON file ({err})") from None
        if not isinstance(mapping, dict) or not mapping or not all(isinstance(v, str) for v in mapping.values()):
            raise ConfigError(
                f"{_KEY} {str(adapter_path)!r}: expected a JSON object of adapter name -> folder, got {mapping!r}"
            )
        self.pet_type = "slora"
        self.adapter_path = path
        # relative folders are taken from the JSON file's folder when they are not found as given
        self.adapters = [AdapterConfig(str(name), _resolve(folder, path.parent)) for name, folder in mapping.items()]
        self.names = [a.name for a in self.adapters]
        self.rank = max(a.rank for a in self.adapters)
        self.target_modules = "|".join(dict.fromkeys(p for a in self.adapters for p in a.patterns))

    @classmethod
    def from_any(cls, config) -> SLoraConfig:
        if isinstance(config, SLoraConfig):
            return config
        if isinstance(config, Mapping):
            return cls(**dict(config))
        if hasattr(config, "to_dict"):
            return cls(**config.to_dict())
        raise ConfigError(f"model.model_config.pet_config must be a mapping, got {config!r}")


def _resolve(folder: str, base: Path) -> Path:
    path = Path(folder)
    if not path.is_absolute() and not path.exists() and (base / path).exists():
        return base / path
    return path


class AdapterRows:
    """The adapter row of each batch row, shared by every `SLoRALinear` of a model.

    `ids` is `None` (no adapter: the base model) or an int64 tensor `(B,)` of rows of the stacked
    adapters (0 = base). `generate` sets it through `select` and clears it when it returns."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.ids: torch.Tensor | None = None

    def select(self, adapter_ids: Sequence[str | None] | None, batch_size: int, device: torch.device) -> None:
        """Per-row adapter names -> rows, with MindFormers' fallbacks: no list, `None` or an unknown name
        runs the base model for that row (with a warning)."""
        if adapter_ids is None:
            logger.warning("S-LoRA adapter ids got none, use base model without S-LoRA")
            self.ids = None
            return
        if len(adapter_ids) != batch_size:
            raise ConfigError(f"adapter_ids has {len(adapter_ids)} entries for a batch of {batch_size} inputs")
        rows = []
        for i, name in enumerate(adapter_ids):
            if name is None:
                logger.warning("S-LoRA adapter id got none for batch %d, use base model without S-LoRA", i)
                rows.append(0)
            elif str(name) in self.names:
                rows.append(self.names.index(str(name)) + 1)
            else:
                logger.warning(
                    "Can not find %s in registered adapter names for batch %d, use base model without S-LoRA, "
                    "supported adapter list: %s", name, i, self.names,
                )  # fmt: skip
                rows.append(0)
        self.ids = torch.tensor(rows, dtype=torch.long, device=device) if any(rows) else None

    def clear(self) -> None:
        self.ids = None


class SLoRALinear(nn.Linear):
    """`nn.Linear` plus one of several stacked LoRA updates per batch row; shares the base weight and bias."""

    def __init__(self, base: nn.Linear, rows: AdapterRows, num_adapters: int, rank: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rows = rows
        dtype, device = base.weight.dtype, base.weight.device
        shape_a, shape_b = (num_adapters + 1, rank, self.in_features), (num_adapters + 1, self.out_features, rank)
        # MindFormers' SLoraLinear names; row 0 stays zero (the base model)
        self.lora_a = nn.Parameter(torch.zeros(shape_a, dtype=dtype, device=device), requires_grad=False)
        self.lora_b = nn.Parameter(torch.zeros(shape_b, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        ids = self.rows.ids
        if ids is None:  # no row has an adapter
            return out
        if x.dim() < 2 or x.shape[0] != ids.shape[0]:
            raise ValueError(f"SLoRALinear: input {tuple(x.shape)} does not match {ids.shape[0]} selected adapters")
        a = self.lora_a.index_select(0, ids)  # (B, r, in)
        b = self.lora_b.index_select(0, ids)  # (B, out, r)
        rows = x.reshape(x.shape[0], -1, self.in_features)  # (B, T, in); (B, in) -> (B, 1, in)
        delta = torch.bmm(torch.bmm(rows, a.transpose(1, 2)), b.transpose(1, 2))  # (B, T, out)
        return out + delta.reshape(out.shape)

    def extra_repr(self) -> str:
        adapters, rank = self.lora_a.shape[0] - 1, self.lora_a.shape[1]
        return f"{self.in_features}, {self.out_features}, adapters={adapters}, rank={rank}"


def _split_key(key: str) -> tuple[str, str] | None:
    """`<module>.lora_a` (or another adapter name) -> (`<module>`, 'a' | 'b'); other keys -> None."""
    for suffixes, which in ((_A_SUFFIXES, "a"), (_B_SUFFIXES, "b")):
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[: -len(suffix)], which
    return None


def read_adapter(adapter: AdapterConfig) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter's weights, `{module name: {'a': (r, in), 'b': (out, r)}}`."""
    files = [adapter.folder / f for f in WEIGHT_FILES if (adapter.folder / f).is_file()]
    if not files:
        raise CheckpointError(adapter.folder, f"adapter {adapter.name!r}: no {' or '.join(WEIGHT_FILES)} in the folder")
    state = read_weights(files[0])
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        if split is not None:
            modules.setdefault(split[0], {})[split[1]] = tensor
    if not modules:
        raise CheckpointError(
            files[0],
            f"adapter {adapter.name!r}: no LoRA weights (names ending in .lora_a/.lora_b or "
            f".mindpet_delta_lora_a/_b, MindFormers' parameter names); keys seen: {sorted(state)[:4]}",
        )
    for module, pair in modules.items():
        if set(pair) != {"a", "b"}:
            raise CheckpointError(files[0], f"adapter {adapter.name!r}: {module} has lora_{next(iter(pair))} only")
        a, b = pair["a"], pair["b"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != adapter.rank or b.shape[1] != adapter.rank:
            raise CheckpointError(
                files[0],
                f"adapter {adapter.name!r}: {module} has lora_a {tuple(a.shape)} and lora_b {tuple(b.shape)}; "
                f"expected (r, in) and (out, r) with r = {adapter.rank} ({ADAPTER_CONFIG})",
            )
    return modules


def get_slora_model(model: nn.Module, pet_config) -> nn.Module:
    """Load every adapter of `pet_config.adapter_path` onto `model` (in place, unmerged) and let
    `generate(adapter_id=... | adapter_ids=[...])` choose one per row; returns `model`.

    Apply it after the base weights are loaded."""
    config = SLoraConfig.from_any(pet_config)
    weights = [read_adapter(a) for a in config.adapters]
    rows = AdapterRows(config.names)
    wrapped: dict[str, SLoRALinear] = {}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or not re.match(config.target_modules, name):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped[name] = SLoRALinear(module, rows, len(config.adapters), config.rank)
        setattr(parent, child, wrapped[name])
    if not wrapped:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ConfigError(
            f"{config.adapter_path}: the adapters' target_modules ({config.target_modules}) match no nn.Linear "
            f"of {type(model).__name__} (linear layers are named like {linears})"
        )
    with torch.no_grad():
        for row, (adapter, modules) in enumerate(zip(config.adapters, weights), start=1):
            for module_name, pair in modules.items():
                layer = wrapped.get(module_name)
                if layer is None:
                    raise CheckpointError(
                        adapter.folder,
                        f"adapter {adapter.name!r}: weights for {module_name}, which is not a LoRA target of the "
                        f"model (targets matched: {sorted(wrapped)[:4]}...)",
                    )
                a, b = pair["a"], pair["b"]
                if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
                    raise CheckpointError(
                        adapter.folder,
                        f"adapter {adapter.name!r}: {module_name} lora_a {tuple(a.shape)} / lora_b {tuple(b.shape)} "
                        f"do not fit the layer ({layer.out_features} x {layer.in_features})",
                    )
                layer.lora_a[row, : adapter.rank] = a.to(layer.lora_a.dtype)
                # the adapter's own scaling is folded into its B rows
                layer.lora_b[row, :, : adapter.rank] = (b.float() * adapter.scaling).to(layer.lora_b.dtype)
    if len({a.scaling for a in config.adapters}) > 1:
        logger.info(
            "S-LoRA adapters differ in lora_alpha / r: each is scaled by its own, as MindFormers 1.5+ "
            "(MindFormers 1.3.2 applied the first adapter's lora_alpha over the largest r to all)"
        )
    model.slora_config = config
    generation_state(model).adapter_rows = rows
    logger.info(
        "S-LoRA: %d adapters (%s) on %d linears, rank %d", len(config.names), ", ".join(config.names),
        len(wrapped), config.rank,
    )  # fmt: skip
    return model
