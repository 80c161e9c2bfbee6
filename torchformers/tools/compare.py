"""Layer-by-layer comparison of a reference model and a candidate: where do their outputs first diverge?

    python -m torchformers.tools.compare --reference HF_FOLDER|YAML|CKPT_FOLDER \
        --candidate YAML|CKPT_FOLDER|CKPT_FILE [--text "..." | --ids 1,2,3] [--backward] [--json OUT]

Both models run on the same token ids with forward hooks on every module that owns parameters. Modules
are matched through the model family's weight key map (its `ModelSpec.hf_key_map`): two modules
correspond when the parameters under them correspond, so Hugging Face `model.layers.3.mlp` pairs with
native `model.layers.3.feed_forward` and `mlp.gate_proj` with `feed_forward.w1`, with no per-model table.

A module's output passes when `max|cand - ref| <= atol + rtol * max|ref|`. The first divergence is
found in forward order from both outputs and inputs: a module whose inputs already differ while no
earlier output did (e.g. `attention.wo` after a wrong RoPE) points at its enclosing module, where the
difference was made. `--backward` adds the loss and per-parameter gradients of one step of next-token
cross-entropy on the same shifted tokens.

Hugging Face folders are loaded with `transformers`, imported only when one is given (it is a test
dependency of torchformers, not a runtime one). The tolerances follow `torch.testing`'s defaults per
dtype in spirit: fp32 1e-5, bf16/fp16 looser (see `PRESETS`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchformers.checkpoint import CheckpointError, open_checkpoint
from torchformers.checkpoint.convert import hf_key_map, key_map_models
from torchformers.errors import ConfigError, TorchformersError
from torchformers.models import LlamaConfig
from torchformers.models.configuration_utils import PretrainedConfig
from torchformers.models.modeling_utils import CheckpointLoadError
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import build_model_config, build_tokenizer
from torchformers.tools.register.config import MindFormerConfig
from torchformers.tools.register.paths import resolve_path
from torchformers.utils import DTYPES, dtype_name, to_dtype

__all__ = [
    "PRESETS",
    "CompareError",
    "CompareResult",
    "Row",
    "Side",
    "compare_models",
    "load_side",
    "load_tokenizer",
    "main",
    "match_modules",
]

# --preset NAME: the dtype both models run in and tolerances suited to it. fp32 differences between two
# correct implementations come from summation order (~1e-6 relative); bf16 keeps 8 mantissa bits (~4e-3 per
# op), and over 30 layers SmolLM2-135M in bf16 against fp32 reaches 5.5e-2 (max-abs relative) in its worst FFN.
PRESETS: dict[str, dict[str, Any]] = {
    "fp32": {"dtype": "fp32", "atol": 1e-5, "rtol": 1e-5},
    "fp16": {"dtype": "fp16", "atol": 1e-3, "rtol": 2e-2},
    "bf16": {"dtype": "bf16", "atol": 1e-2, "rtol": 1e-1},
}

_CONFIG_FILES = ("config.json",)
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".gguf")


class CompareError(TorchformersError, RuntimeError):
    """A user-facing problem (bad path, config, tokenizer or input): printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class Side:
    """One model under comparison.

    `key_map` renames this side's parameter names to native ones (None: the names are native already).
    """

    role: str  # "reference" | "candidate"
    source: str
    model: nn.Module
    backend: str  # "transformers" | "torchformers"
    key_map: Any = None
    config: Any = None
    tokenizer_source: Path | None = None

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.config, "vocab_size", None)


def _key_map(model_type: str | None):
    if model_type not in key_map_models():
        known = ", ".join(key_map_models())
        raise CompareError(f"model_type {model_type!r} has no weight key map to match layers with (known: {known})")
    return hf_key_map(model_type)


def _import_transformers():
    try:
        import transformers  # optional: only Hugging Face folders need it
    except ImportError:
        raise CompareError(
            "a Hugging Face model folder is loaded with the 'transformers' package, which is not installed "
            "(pip install transformers); or convert it first with convert_weight.py and compare native checkpoints"
        ) from None
    return transformers


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _weight_names(path: Path) -> list[str]:
    try:
        return list(open_checkpoint(path).specs())
    except CheckpointError as err:
        raise CompareError(str(err)) from None


def _dtype_overrides(config: Any, dtype: torch.dtype | None) -> None:
    """Run a native model in `dtype`: weights and matmuls; norms and RoPE tables keep their own (fp32) types."""
    if dtype is None:
        return
    for attr in ("compute_dtype", "param_init_type", "embedding_init_type", "residual_dtype"):
        if hasattr(config, attr):
            setattr(config, attr, dtype)


def _native_from_config(config: Any, arch: str | None, weights: Path | None, role: str, source: str) -> nn.Module:
    if not arch:
        raise CompareError(f"--{role} {source}: the config names no architecture ('architectures' or model.arch)")
    try:
        model_cls = MindFormerRegister.get_cls(MindFormerModuleType.MODELS, arch)
        model = model_cls(config)
        if weights is not None:
            model.load_checkpoint(weights)
    except (CheckpointLoadError, TorchformersError) as err:
        raise CompareError(f"--{role} {source}: {err}") from None
    return model.eval()


def _load_hf_folder(path: Path, role: str, dtype: torch.dtype | None) -> Side:
    transformers = _import_transformers()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    hf_logging = transformers.utils.logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep the report readable
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, local_files_only=True
        ).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = path if _has_tokenizer(path) else None
    return Side(role, str(path), model, "transformers", _key_map(config.model_type), config, tokenizer)


def _load_native_folder(path: Path, role: str, dtype: torch.dtype | None) -> Side:
    try:
        raw = PretrainedConfig.from_pretrained(path)
        arch = (raw.architectures or [None])[0]
        if arch and MindFormerRegister.is_exist(MindFormerModuleType.MODELS, arch):
            config_cls = MindFormerRegister.get_cls(MindFormerModuleType.MODELS, arch).config_class
            config = config_cls.from_pretrained(path)
        else:
            config = raw
    except ConfigError as err:
        raise CompareError(f"--{role} {path}: {err}") from None
    _dtype_overrides(config, dtype)
    model = _native_from_config(config, arch, path, role, str(path))
    return Side(role, str(path), model, "torchformers", None, config, path if _has_tokenizer(path) else None)


def _load_yaml(path: Path, role: str, dtype: torch.dtype | None) -> Side:
    try:
        cfg = MindFormerConfig(str(path))
        block = cfg.get("model")
        if not isinstance(block, dict) or "model_config" not in block or "arch" not in block:
            raise CompareError(f"--{role} {path}: the YAML needs a 'model' section with model_config and arch")
        config = build_model_config(block["model_config"])
        checkpoint = cfg.get("load_checkpoint") or getattr(config, "checkpoint_name_or_path", "")
        if not checkpoint:
            raise CompareError(f"--{role} {path}: the YAML names no weights (load_checkpoint is empty)")
        weights = Path(checkpoint)
        if not weights.exists():  # as run_mindformer.py: relative to the current folder, then the repository
            try:
                weights = resolve_path(str(checkpoint), "load_checkpoint", must_be_dir=False)
            except ConfigError:
                weights = resolve_path(str(checkpoint), "load_checkpoint", must_be_dir=True)
    except ConfigError as err:
        raise CompareError(f"--{role} {path}: {err}") from None
    _dtype_overrides(config, dtype)
    model = _native_from_config(config, block["arch"].get("type"), weights, role, str(path))
    return Side(role, str(path), model, "torchformers", None, config, path)


def _load_bare_checkpoint(path: Path, role: str, dtype: torch.dtype | None, base: Side | None) -> Side:
    if base is None:
        raise CompareError(
            f"--{role} {path}: a bare checkpoint file has no config; give a folder with config.json, a YAML, "
            "or use it as --candidate (its config is then taken from the reference)"
        )
    if base.backend == "transformers":
        # a Hugging Face config.json reads directly into the native config class (e.g. LlamaConfig)
        arch = (base.config.architectures or ["LlamaForCausalLM"])[0]
        config = LlamaConfig(**base.config.to_dict())
    else:
        arch = type(base.model).__name__
        config = copy.deepcopy(base.model.config)
    _dtype_overrides(config, dtype)
    model = _native_from_config(config, arch, path, role, str(path))
    return Side(role, str(path), model, "torchformers", None, config, None)


def load_side(
    path: str | Path, role: str = "candidate", *, dtype: torch.dtype | None = None, base: Side | None = None
) -> Side:
    """Load one side of the comparison.

    Args:
        path: a Hugging Face model folder (config.json + weights with Hugging Face names; loaded with
            `transformers`), a torchformers checkpoint folder (config.json or one YAML + native weights),
            a MindFormers YAML (`model:` block and `load_checkpoint`), or a bare checkpoint file whose
            config comes from `base`.
        role: "reference" or "candidate", for messages.
        dtype: the dtype to run in; None keeps the config's (Hugging Face folders: float32).
        base: the other, already loaded side (config source for a bare checkpoint file).
    """
    path = Path(path)
    if not path.exists():
        raise CompareError(f"--{role} {path}: no such file or folder")
    if path.suffix in (".yaml", ".yml"):
        return _load_yaml(path, role, dtype)
    if path.is_dir():
        has_config = (path / "config.json").is_file() or any(path.glob("*.yaml"))
        if not has_config:
            raise CompareError(f"--{role} {path}: the folder has no config.json or .yaml to build the model from")
        model_type = None
        if (path / "config.json").is_file():
            try:
                model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
            except json.JSONDecodeError as err:
                raise CompareError(f"--{role} {path / 'config.json'}: not valid JSON ({err})") from None
        names = _weight_names(path)
        key_map = _key_map(model_type or "llama")
        hf_names = any(key_map.is_external(n) and not key_map.is_native(n) for n in names)
        if hf_names and (path / "config.json").is_file():
            return _load_hf_folder(path, role, dtype)
        return _load_native_folder(path, role, dtype)
    if path.suffix.lower() not in _WEIGHT_SUFFIXES:
        raise CompareError(
            f"--{role} {path}: expected a YAML, a model folder or a checkpoint file ({', '.join(_WEIGHT_SUFFIXES)})"
        )
    return _load_bare_checkpoint(path, role, dtype, base)


def load_tokenizer(source: str | Path):
    """A torchformers tokenizer from a folder (tokenizer_config.json / tokenizer.json), a `tokenizer.json`
    file, or a YAML with a `processor.tokenizer` block."""
    path = Path(source)
    try:
        if path.suffix in (".yaml", ".yml"):
            block = MindFormerConfig(str(path)).get_value("processor.tokenizer")
            if not isinstance(block, dict):
                raise CompareError(f"--tokenizer {path}: the YAML has no processor.tokenizer block")
            return build_tokenizer(block)
        if path.is_file() and path.suffix == ".json":
            return PretrainedTokenizerFast(tokenizer_file=str(path))
        if path.is_dir():
            cls = PretrainedTokenizerFast
            config_file = path / "tokenizer_config.json"
            if config_file.is_file():
                name = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
                if name and MindFormerRegister.is_exist(MindFormerModuleType.TOKENIZER, name):
                    cls = MindFormerRegister.get_cls(MindFormerModuleType.TOKENIZER, name)
            return cls.from_pretrained(path)
    except CompareError:
        raise
    except (ValueError, OSError, KeyError) as err:  # tokenizer and config errors derive from these
        raise CompareError(f"--tokenizer {path}: {err}") from None
    raise CompareError(f"--tokenizer {path}: expected a tokenizer folder, a tokenizer.json or a YAML")


# ---------------------------------------------------------------------------------------------------- matching


def _native_param_names(side: Side, module: nn.Module, prefix: str) -> frozenset[str]:
    names = (n for n, _ in module.named_parameters(prefix=prefix, remove_duplicate=False))
    if side.key_map is None:
        return frozenset(names)
    km = side.key_map
    return frozenset(km.to_native(n) if km.is_external(n) else n for n in names)


def match_modules(reference: Side, candidate: Side) -> dict[str, str]:
    """`{candidate module: reference module}` for modules that hold the same (renamed) parameters.

    Modules without parameters (RoPE tables, activations) and the root are not matched. Where a wrapper
    holds exactly its child's parameters, both levels match in order (outer with outer).
    """
    by_params: list[dict[frozenset, list[str]]] = []
    for side in (reference, candidate):
        table: dict[frozenset, list[str]] = {}
        for name, module in side.model.named_modules(remove_duplicate=False):
            if not name:
                continue
            params = _native_param_names(side, module, name)
            if params and name not in table.get(params, []):
                table.setdefault(params, []).append(name)
        by_params.append(table)
    ref_table, cand_table = by_params
    pairs = {}
    for params, cand_names in cand_table.items():
        ref_names = ref_table.get(params)
        if ref_names and len(ref_names) == len(cand_names):
            pairs.update(zip(cand_names, ref_names, strict=True))
    return pairs


# ---------------------------------------------------------------------------------------------------- recording


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):  # ModelOutput and kwargs
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    for attr in ("last_hidden_state", "logits"):
        if hasattr(value, attr):
            return getattr(value, attr)
    return None


@dataclass
class _Event:
    module: str
    kind: str  # "in" | "out"
    tensor: torch.Tensor | None
    call: int


class _Recorder:
    """Forward hooks on the given modules, recording inputs and outputs (detached) in call order."""

    def __init__(self, model: nn.Module, names: set[str]) -> None:
        self.events: list[_Event] = []
        self._calls: dict[str, int] = {}
        self._handles = []
        for name, module in model.named_modules(remove_duplicate=False):
            if name in names:
                self._handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            tensor = _first_tensor(list(args)) if args else None
            if tensor is None:
                tensor = kwargs.get("hidden_states") if isinstance(kwargs.get("hidden_states"), torch.Tensor) else None
            if tensor is None:
                tensor = _first_tensor(dict(kwargs))
            self.events.append(_Event(name, "in", _keep(tensor), call))

        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            self.events.append(_Event(name, "out", _keep(_first_tensor(output)), self._calls[name] - 1))

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _keep(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to("cpu", copy=True)


# ---------------------------------------------------------------------------------------------------- metrics


@dataclass
class Row:
    """One compared tensor: a module's output, the loss, or a parameter's gradient."""

    candidate: str
    reference: str
    max_abs: float
    rel_err: float  # max|cand - ref| / max|ref|
    cosine: float
    ok: bool
    note: str = ""


def _metrics(cand: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> tuple[float, float, float, bool, str]:
    if cand.shape != ref.shape:
        return math.inf, math.inf, math.nan, False, f"shape {list(cand.shape)} vs reference {list(ref.shape)}"
    a, b = cand.double().flatten(), ref.double().flatten()
    diff = (a - b).abs()
    finite = bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    na, nb = a.norm().item(), b.norm().item()
    cosine = 1.0 if na == nb == 0 else ((a @ b).item() / (na * nb) if na > 0 and nb > 0 else 0.0)
    ok = finite and max_abs <= atol + rtol * scale
    return max_abs, rel, cosine, ok, "" if finite else "non-finite values"


@dataclass
class CompareResult:
    """Rows in forward order (module outputs), then the loss and gradients with `--backward`."""

    rows: list[Row] = field(default_factory=list)
    first_divergence: str | None = None
    reason: str = ""
    loss: Row | None = None
    gradients: list[Row] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def ok(self) -> bool:
        rows = [*self.rows, *self.gradients, *([self.loss] if self.loss else [])]
        return all(r.ok for r in rows)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "first_divergence": self.first_divergence,
            "reason": self.reason,
            "atol": self.atol,
            "rtol": self.rtol,
            "layers": [_jsonable(asdict(r)) for r in self.rows],
            "loss": _jsonable(asdict(self.loss)) if self.loss else None,
            "gradients": [_jsonable(asdict(r)) for r in self.gradients],
            "unmatched_candidate_modules": self.unmatched,
        }


def _jsonable(row: dict) -> dict:
    # JSON has no inf/nan: write them as strings
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------------- comparing


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def _forward(side: Side, ids: torch.Tensor, names: set[str]) -> list[_Event]:
    recorder = _Recorder(side.model, names)
    try:
        with torch.no_grad():
            side.model(ids.to(_device(side.model)))
    finally:
        recorder.remove()
    return recorder.events


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _compare_forward(
    reference: Side, candidate: Side, ids: torch.Tensor, pairs: dict[str, str], atol: float, rtol: float
) -> CompareResult:
    cand_events = _forward(candidate, ids, set(pairs))
    ref_events = {(e.module, e.kind, e.call): e for e in _forward(reference, ids, set(pairs.values()))}
    result = CompareResult(atol=atol, rtol=rtol)
    open_modules: list[str] = []
    for event in cand_events:
        ref = ref_events.get((pairs[event.module], event.kind, event.call))
        if event.kind == "in":
            open_modules.append(event.module)
        else:
            open_modules.pop()
        if ref is None or event.tensor is None or ref.tensor is None:
            continue
        max_abs, rel, cosine, ok, note = _metrics(event.tensor, ref.tensor, atol, rtol)
        if event.kind == "in":
            # inputs only locate a divergence: shapes may legitimately differ (e.g. packed q/k/v)
            if not ok and result.first_divergence is None and event.tensor.shape == ref.tensor.shape:
                enclosing = [m for m in reversed(open_modules[:-1]) if m in pairs]
                result.first_divergence = enclosing[0] if enclosing else event.module
                result.reason = f"the input of {event.module} differs while every earlier output matched"
            continue
        label = event.module if event.call == 0 else f"{event.module} (call {event.call + 1})"
        result.rows.append(Row(label, pairs[event.module], max_abs, rel, cosine, ok, note))
        if not ok and result.first_divergence is None:
            result.first_divergence = event.module
            result.reason = f"the output of {event.module} is beyond tolerance while its input matched"
    called = {e.module for e in cand_events}
    result.unmatched = sorted(
        n
        for n, m in candidate.model.named_modules()
        if n and n not in pairs and n not in called and any(True for _ in m.parameters(recurse=False))
    )
    return result


def _loss_and_grads(side: Side, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy of `ids[:, :-1]` predicting `ids[:, 1:]`, and gradients by native name."""
    model = side.model
    model.zero_grad(set_to_none=True)
    ids = ids.to(_device(model))
    with torch.enable_grad():
        logits = _logits(model(ids[:, :-1])).float()  # (B, T-1, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
    grads = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        native = name
        if side.key_map is not None and side.key_map.is_external(name):
            native = side.key_map.to_native(name)
        if param.grad is not None:
            grads[native] = param.grad.detach().to("cpu", copy=True)
    model.zero_grad(set_to_none=True)
    return loss.detach().cpu(), grads


def _compare_backward(
    reference: Side, candidate: Side, ids: torch.Tensor, result: CompareResult, atol: float, rtol: float
) -> None:
    if ids.shape[1] < 2:
        raise CompareError("--backward needs at least 2 tokens (inputs and their shifted targets)")
    ref_loss, ref_grads = _loss_and_grads(reference, ids)
    cand_loss, cand_grads = _loss_and_grads(candidate, ids)
    max_abs, rel, cosine, ok, note = _metrics(cand_loss, ref_loss, atol, rtol)
    result.loss = Row("loss", "loss", max_abs, rel, cosine, ok, f"{cand_loss.item():.6f} vs {ref_loss.item():.6f}")
    for name, grad in cand_grads.items():  # candidate names are native, in forward (definition) order
        if name not in ref_grads:
            continue
        result.gradients.append(Row(name, name, *_metrics(grad, ref_grads[name], atol, rtol)))
    bad = [r for r in result.gradients if not r.ok]
    if result.first_divergence is None and not result.loss.ok:
        result.first_divergence, result.reason = "loss", "outputs matched but the loss differs"
    elif result.first_divergence is None and bad:
        # gradients flow backwards: the last diverging parameter in forward order is where it starts
        module = bad[-1].candidate.rpartition(".")[0]
        result.first_divergence = module
        result.reason = f"outputs matched; the gradient of {bad[-1].candidate} is the first to differ in backward order"


def compare_models(
    reference: Side,
    candidate: Side,
    input_ids: torch.Tensor,
    *,
    atol: float = PRESETS["fp32"]["atol"],
    rtol: float = PRESETS["fp32"]["rtol"],
    backward: bool = False,
) -> CompareResult:
    """Run both models on `input_ids` (B, T) and compare matched modules' outputs (and, with `backward`,
    the loss and gradients of one step). See the module docstring for the pass criterion."""
    pairs = match_modules(reference, candidate)
    if not pairs:
        raise CompareError(
            f"no module of the candidate ({candidate.source}) matches one of the reference ({reference.source}) "
            "through the weight key map: are they the same architecture?"
        )
    result = _compare_forward(reference, candidate, input_ids, pairs, atol, rtol)
    if backward:
        _compare_backward(reference, candidate, input_ids, result, atol, rtol)
    return result


# ---------------------------------------------------------------------------------------------------- CLI


def _input_ids(args: argparse.Namespace, reference: Side, candidate: Side) -> torch.Tensor:
    vocab = min(v for v in (reference.vocab_size, candidate.vocab_size) if v) if reference.vocab_size else None
    if args.ids is not None:
        try:
            ids = [int(t) for t in args.ids.replace(",", " ").split()]
        except ValueError:
            raise CompareError(f"--ids {args.ids!r}: expected integers separated by commas or spaces") from None
        if not ids:
            raise CompareError("--ids is empty")
        if vocab is not None and not all(0 <= i < vocab for i in ids):
            raise CompareError(f"--ids {args.ids!r}: every id must be in [0, {vocab}) (the vocabulary size)")
        return torch.tensor([ids])
    if args.text is not None:
        source = args.tokenizer or reference.tokenizer_source or candidate.tokenizer_source
        if source is None:
            raise CompareError("--text needs a tokenizer: pass --tokenizer (folder, tokenizer.json or YAML)")
        if args.tokenizer and not Path(args.tokenizer).exists():
            raise CompareError(f"--tokenizer {args.tokenizer}: no such file or folder")
        ids = load_tokenizer(source)(args.text)["input_ids"]
        if not ids:
            raise CompareError(f"--text {args.text!r} gives no tokens")
        return torch.tensor([ids])
    # no input given: a fixed pseudo-random sequence, the same on every run. The pad id is left out:
    # Hugging Face's embedding zeroes its gradient (padding_idx), which is a real but separate difference.
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab or 32000, (1, args.seq_len), generator=generator)
    pad = getattr(reference.config, "pad_token_id", None)
    if isinstance(pad, int):
        ids[ids == pad] = (pad + 1) % (vocab or 32000)
    return ids


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


def format_table(result: CompareResult) -> str:
    """The printed report: one line per compared tensor, then `first divergence: ...`."""
    rows = [*result.rows]
    width = max([len("candidate module"), *(len(r.candidate) for r in [*rows, *result.gradients])]) + 2
    ref_width = max([len("reference module"), *(len(r.reference) for r in rows)]) + 2
    head = f"{'candidate module':<{width}}{'reference module':<{ref_width}}"
    head += f"{'max_abs':>11}{'rel_err':>11}{'cosine':>12}  ok"
    lines = [f"tolerance: |cand - ref| <= {result.atol:g} + {result.rtol:g} * max|ref|", head, "-" * len(head)]

    def line(r: Row, ref_name: str) -> str:
        mark = "ok" if r.ok else "DIFF"
        text = f"{r.candidate:<{width}}{ref_name:<{ref_width}}{_fmt(r.max_abs):>11}{_fmt(r.rel_err):>11}"
        text += f"{r.cosine:>12.8f}  {mark}"
        return text + (f"  ({r.note})" if r.note else "")

    lines += [line(r, r.reference) for r in rows]
    if result.loss is not None:
        lines += ["", "backward (one step of next-token cross-entropy on the same shifted tokens):"]
        lines.append(line(result.loss, ""))
        lines += [line(r, "(gradient)") for r in result.gradients]
    worst = max(rows, key=lambda r: r.rel_err, default=None)
    if worst is not None:
        lines.append(f"worst layer: {worst.candidate} max_abs {_fmt(worst.max_abs)} rel_err {_fmt(worst.rel_err)}")
    if result.first_divergence is None:
        lines.append("no divergence")
    else:
        lines.append(f"({result.reason})")
        lines.append(f"first divergence: {result.first_divergence}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchformers.tools.compare",
        description="Compare a candidate model with a reference layer by layer and name the first divergence.",
    )
    parser.add_argument(
        "--reference", required=True, help="Hugging Face folder, torchformers YAML or checkpoint folder"
    )
    parser.add_argument(
        "--candidate", required=True, help="YAML, checkpoint folder with config, or bare checkpoint file"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", help="input text (tokenized with --tokenizer or the reference's tokenizer)")
    source.add_argument("--ids", help="input token ids, e.g. '1,15,27'")
    parser.add_argument("--tokenizer", help="tokenizer folder, tokenizer.json or YAML with processor.tokenizer")
    parser.add_argument("--seq_len", "--seq-len", type=int, default=16, help="random ids when no input (16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ids (0)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="dtype and tolerances (fp32)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="run both models in this dtype")
    parser.add_argument("--reference_dtype", "--reference-dtype", choices=sorted(DTYPES), default=None,
                        help="run the reference in another dtype (e.g. fp32 against a bf16 candidate)")  # fmt: skip
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (preset's)")
    parser.add_argument("--rtol", type=float, default=None, help="tolerance relative to max|reference| (preset's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (cpu)")
    parser.add_argument("--backward", action="store_true", help="also compare the loss and gradients of one step")
    parser.add_argument("--json", metavar="OUT", help="write the table and verdict to this JSON file")
    return parser


def run(args: argparse.Namespace) -> tuple[CompareResult, str]:
    preset = PRESETS[args.preset or "fp32"]
    dtype = to_dtype(args.dtype or preset["dtype"], "--dtype")
    ref_dtype = to_dtype(args.reference_dtype, "--reference_dtype") if args.reference_dtype else dtype
    atol = args.atol if args.atol is not None else preset["atol"]
    rtol = args.rtol if args.rtol is not None else preset["rtol"]
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise CompareError(f"--device {args.device!r}: {err}") from None
    for role in ("reference", "candidate"):  # before anything slow is loaded
        if not Path(getattr(args, role)).exists():
            raise CompareError(f"--{role} {getattr(args, role)}: no such file or folder")
    reference = load_side(args.reference, "reference", dtype=ref_dtype)
    candidate = load_side(args.candidate, "candidate", dtype=dtype, base=reference)
    reference.model.to(device)
    candidate.model.to(device)
    ids = _input_ids(args, reference, candidate)
    result = compare_models(reference, candidate, ids, atol=atol, rtol=rtol, backward=args.backward)
    header = (
        f"reference: {reference.source} ({reference.backend}, {dtype_name(ref_dtype)})\n"
        f"candidate: {candidate.source} ({candidate.backend}, {dtype_name(dtype)})\n"
        f"input: {ids.shape[1]} tokens on {device}"
    )
    return result, header


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when every compared tensor is within tolerance, 1 when one is not, 2 on a usage error.

    Every `TorchformersError` (a bad path, config, checkpoint or tokenizer) is one line on stderr
    (`compare: error: ...`; the traceback with `TORCHFORMERS_DEBUG=1`).
    """
    args = build_parser().parse_args(argv)
    try:
        result, header = run(args)
    except TorchformersError as err:
        if os.environ.get("TORCHFORMERS_DEBUG") == "1":
            raise
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    print(header)
    print(format_table(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
