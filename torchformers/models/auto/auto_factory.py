"""`AutoConfig`, `AutoModel`, `AutoModelForCausalLM`, `AutoTokenizer`, `AutoProcessor`: MindFormers'
`mindformers/models/auto/` classes, driven by the registry.

`from_pretrained(x)` takes
- a MindFormers YAML file: the classes are the YAML's `type:` names (`model.model_config.type`,
  `model.arch.type`, `processor.tokenizer.type`, `processor.type`), built with the `build_*` functions;
- a folder holding `config.json` (Hugging Face or `save_pretrained` layout) or one MindFormers `.yaml`:
  the class comes from `architectures` / `model_type` through the registered `ModelSpec`s, from
  `tokenizer_config.json`'s `tokenizer_class` / `processor_class`, or from the folder's YAML;
- a registered class name (`"LlamaConfig"`, `"LlamaTokenizer"`, ...): that class, built from `kwargs`
  (a model built from its class name has freshly initialised weights).
Nothing is guessed: a name that is not registered, or a file that names no class, raises `ConfigError`
saying what was tried. Model hubs (MindFormers' supported-name downloads, openMind) are not used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchformers.errors import ConfigError
from torchformers.models.configuration_utils import CONFIG_NAME, PretrainedConfig
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import build_model, build_processor, build_tokenizer
from torchformers.tools.register.config import MindFormerConfig

__all__ = ["AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoProcessor", "AutoTokenizer"]

T = MindFormerModuleType
_TOKENIZER_CONFIG = "tokenizer_config.json"
_ACCEPTS = "a MindFormers .yaml file, a folder with config.json or one .yaml, or a registered class name"


def _registered(module_type: str, name: Any) -> bool:
    return isinstance(name, str) and MindFormerRegister.is_exist(module_type, name)


def _known(module_type: str) -> str:
    return ", ".join(sorted(MindFormerRegister.registry.get(module_type, {}))) or "none"


def _folder_yaml(folder: Path) -> Path | None:
    """The folder's MindFormers YAML, when it holds exactly one."""
    yamls = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    return yamls[0] if len(yamls) == 1 else None


def _is_yaml(path: Path) -> bool:
    return path.is_file() and path.suffix in (".yaml", ".yml")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _block(config: Mapping, dotted: str) -> Mapping | None:
    value: Any = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else None


def _spec_for_json(data: Mapping, where: Path):
    """The registered `ModelSpec` a `config.json` belongs to: by `architectures`, then by `model_type`."""
    for arch in data.get("architectures") or []:
        spec = MindFormerRegister.find_model_spec(
            lambda s, a=arch: a in s.hf_architectures or a in {c.__name__ for c in s.model_classes}
        )
        if spec is not None:
            return spec
    model_type = data.get("model_type")
    spec = MindFormerRegister.find_model_spec(lambda s: getattr(s.config_class, "model_type", None) == model_type)
    if spec is None:
        raise ConfigError(
            f"{where}: architectures {data.get('architectures')!r} / model_type {model_type!r} match no registered "
            f"model family (registered: {', '.join(sorted(MindFormerRegister.model_specs)) or 'none'})"
        )
    return spec


def _config_class_of_yaml(path: Path) -> type:
    cfg = MindFormerConfig(str(path))
    block = _block(cfg, "model.model_config")
    if block is None:
        raise ConfigError(f"{path}: expected a mapping at 'model.model_config' (MindFormers YAML layout)")
    if block.get("type"):
        return MindFormerRegister.get_cls(T.CONFIG, block["type"])
    arch = _block(cfg, "model.arch") or {}
    spec = (
        MindFormerRegister.model_spec_of(MindFormerRegister.get_cls(T.MODELS, arch["type"]))
        if arch.get("type")
        else None
    )
    if spec is None:
        raise ConfigError(f"{path}: model.model_config.type is not set and model.arch.type names no registered family")
    return spec.config_class


def _model_class_of(config: PretrainedConfig) -> type:
    for arch in getattr(config, "architectures", None) or []:
        if _registered(T.MODELS, arch):
            return MindFormerRegister.get_cls(T.MODELS, arch)
    spec = MindFormerRegister.model_spec_of(config)
    if spec is None:
        raise ConfigError(
            f"no registered model class for {type(config).__name__} (architectures "
            f"{getattr(config, 'architectures', None)!r}; registered models: {_known(T.MODELS)})"
        )
    return spec.model_class


class AutoConfig:
    """`AutoConfig.from_pretrained(x, **kwargs)`: the registered config class `x` names; `kwargs` override."""

    def __init__(self) -> None:
        raise ConfigError("AutoConfig is not instantiated; use AutoConfig.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, yaml_name_or_path: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
        if _registered(T.CONFIG, yaml_name_or_path):
            return MindFormerRegister.get_cls(T.CONFIG, yaml_name_or_path)(**kwargs)
        path = Path(yaml_name_or_path)
        if _is_yaml(path):
            return _config_class_of_yaml(path).from_pretrained(path, **kwargs)
        if path.is_file() and path.suffix == ".json":
            return _spec_for_json(_read_json(path), path).config_class.from_pretrained(path, **kwargs)
        if path.is_dir():
            if (path / CONFIG_NAME).is_file():
                spec = _spec_for_json(_read_json(path / CONFIG_NAME), path / CONFIG_NAME)
                return spec.config_class.from_pretrained(path, **kwargs)
            yaml_file = _folder_yaml(path)
            if yaml_file is not None:
                return _config_class_of_yaml(yaml_file).from_pretrained(yaml_file, **kwargs)
        raise ConfigError(
            f"AutoConfig.from_pretrained({str(yaml_name_or_path)!r}): expected {_ACCEPTS} "
            f"(registered configs: {_known(T.CONFIG)})"
        )


class AutoModel:
    """`from_pretrained(x, **kwargs)` / `from_config(config)`: the registered model class for `x` or `config`."""

    def __init__(self) -> None:
        raise ConfigError(f"{type(self).__name__} is not instantiated; use from_pretrained(...) or from_config(...)")

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        """A model with fresh weights for `config` (`config.architectures`, else its family's causal-LM class)."""
        if not isinstance(config, PretrainedConfig):
            raise ConfigError(f"{cls.__name__}.from_config expects a PretrainedConfig, got {type(config).__name__}")
        return _model_class_of(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_dir: str | os.PathLike, **kwargs: Any):
        """A YAML file builds `model` with `build_model` (loading `checkpoint_name_or_path` if set; `kwargs`
        override `model_config`); a folder loads config and weights (`PretrainedModel.from_pretrained`)."""
        name = pretrained_model_name_or_dir
        if _registered(T.MODELS, name):
            model_cls = MindFormerRegister.get_cls(T.MODELS, name)
            return model_cls(model_cls.config_class(**kwargs))
        path = Path(name)
        if _is_yaml(path):
            cfg = MindFormerConfig(str(path))
            if _block(cfg, "model") is None:
                raise ConfigError(f"{path}: no 'model' block (expected model.model_config and model.arch)")
            for key, value in kwargs.items():
                cfg.model.model_config[key] = value
            return build_model(cfg.model)
        if path.is_dir() and ((path / CONFIG_NAME).is_file() or _folder_yaml(path) is not None):
            model_cls = _model_class_of(AutoConfig.from_pretrained(path))
            return model_cls.from_pretrained(path, **kwargs)
        raise ConfigError(
            f"{cls.__name__}.from_pretrained({str(name)!r}): expected {_ACCEPTS} "
            f"(registered models: {_known(T.MODELS)})"
        )


class AutoModelForCausalLM(AutoModel):
    """As `AutoModel`: every registered family's first model class is its causal-LM class."""


def _tokenizer_class_of_folder(folder: Path) -> type:
    tried = []
    if (folder / _TOKENIZER_CONFIG).is_file():
        name = _read_json(folder / _TOKENIZER_CONFIG).get("tokenizer_class")
        tried.append(f"{_TOKENIZER_CONFIG} tokenizer_class {name!r}")
        if _registered(T.TOKENIZER, name):
            return MindFormerRegister.get_cls(T.TOKENIZER, name)
    yaml_file = _folder_yaml(folder)
    if yaml_file is not None:
        name = (_block(MindFormerConfig(str(yaml_file)), "processor.tokenizer") or {}).get("type")
        tried.append(f"{yaml_file.name} processor.tokenizer.type {name!r}")
        if _registered(T.TOKENIZER, name):
            return MindFormerRegister.get_cls(T.TOKENIZER, name)
    if (folder / CONFIG_NAME).is_file():
        spec = _spec_for_json(_read_json(folder / CONFIG_NAME), folder / CONFIG_NAME)
        tried.append(f"{CONFIG_NAME} family {spec.name!r}")
        if spec.tokenizer_classes:
            return spec.tokenizer_classes[0]
    raise ConfigError(
        f"AutoTokenizer.from_pretrained({str(folder)!r}): no registered tokenizer class found "
        f"(tried: {'; '.join(tried) or 'no tokenizer_config.json, .yaml or config.json in the folder'}; "
        f"registered tokenizers: {_known(T.TOKENIZER)})"
    )


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(x, **kwargs)`: the registered tokenizer class for `x`."""

    def __init__(self) -> None:
        raise ConfigError("AutoTokenizer is not instantiated; use AutoTokenizer.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, yaml_name_or_path: str | os.PathLike, **kwargs: Any):
        if _registered(T.TOKENIZER, yaml_name_or_path):
            return MindFormerRegister.get_cls(T.TOKENIZER, yaml_name_or_path)(**kwargs)
        path = Path(yaml_name_or_path)
        if _is_yaml(path):
            block = _block(MindFormerConfig(str(path)), "processor.tokenizer")
            if block is None:
                raise ConfigError(f"{path}: expected a mapping at 'processor.tokenizer' (MindFormers YAML layout)")
            return build_tokenizer(dict(block), **kwargs)
        if path.is_dir():
            return _tokenizer_class_of_folder(path).from_pretrained(path, **kwargs)
        raise ConfigError(
            f"AutoTokenizer.from_pretrained({str(yaml_name_or_path)!r}): expected {_ACCEPTS} "
            f"(registered tokenizers: {_known(T.TOKENIZER)})"
        )


class AutoProcessor:
    """`AutoProcessor.from_pretrained(x, **kwargs)`: the registered processor for `x`, holding its tokenizer."""

    def __init__(self) -> None:
        raise ConfigError("AutoProcessor is not instantiated; use AutoProcessor.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, yaml_name_or_path: str | os.PathLike, **kwargs: Any):
        if _registered(T.PROCESSOR, yaml_name_or_path):
            return MindFormerRegister.get_cls(T.PROCESSOR, yaml_name_or_path)(**kwargs)
        path = Path(yaml_name_or_path)
        if _is_yaml(path):
            block = _block(MindFormerConfig(str(path)), "processor")
            if block is None or not block.get("type"):
                raise ConfigError(f"{path}: expected 'processor.type' naming a registered processor")
            return build_processor(dict(block), **kwargs)
        if path.is_dir():
            tried = []
            name = None
            yaml_file = _folder_yaml(path)
            if yaml_file is not None:
                name = (_block(MindFormerConfig(str(yaml_file)), "processor") or {}).get("type")
                tried.append(f"{yaml_file.name} processor.type {name!r}")
            if not _registered(T.PROCESSOR, name) and (path / _TOKENIZER_CONFIG).is_file():
                name = _read_json(path / _TOKENIZER_CONFIG).get("processor_class")
                tried.append(f"{_TOKENIZER_CONFIG} processor_class {name!r}")
            if _registered(T.PROCESSOR, name):
                processor_cls = MindFormerRegister.get_cls(T.PROCESSOR, name)
                return processor_cls(tokenizer=AutoTokenizer.from_pretrained(path), **kwargs)
            raise ConfigError(
                f"AutoProcessor.from_pretrained({str(path)!r}): no registered processor class found "
                f"(tried: {'; '.join(tried) or 'no .yaml or tokenizer_config.json in the folder'}; "
                f"registered processors: {_known(T.PROCESSOR)})"
            )
        raise ConfigError(
            f"AutoProcessor.from_pretrained({str(yaml_name_or_path)!r}): expected {_ACCEPTS} "
            f"(registered processors: {_known(T.PROCESSOR)})"
        )
