"""`PretrainedConfig`: the base class of every model configuration.

Follows MindFormers' `mindformers/models/configuration_utils.py` (itself a port of Hugging Face's):
unknown keyword arguments are accepted and kept as attributes, `attribute_map` declares aliases, and a
config is read from and written to two forms:

* MindFormers YAML: `{model: {model_config: {type: LlamaConfig, ...}, arch: {type: LlamaForCausalLM}}}`;
* a `config.json` (our own field names, or Hugging Face's, which a subclass such as `LlamaConfig`
  translates in its `__init__`).

Dtype fields (`compute_dtype`, `param_init_type`, ...) are held as `torch.dtype` and written as strings.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from torchformers.errors import ConfigError
from torchformers.utils import to_dtype

__all__ = ["CONFIG_NAME", "ConfigError", "PretrainedConfig", "convert_dtype", "dtype_to_str"]

CONFIG_NAME = "config.json"

def convert_dtype(value: str | torch.dtype | None, key: str = "dtype") -> torch.dtype | None:
    """Turn "float16" / "bfloat16" / "float32" (also MindSpore's "mstype.float16") into a torch dtype."""
    return to_dtype(value, key)


def dtype_to_str(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return value


def _plain(value: Any) -> Any:
    """A JSON/YAML-serialisable copy of a config value (dtypes as strings, nested configs as dicts)."""
    if isinstance(value, torch.dtype):
        return dtype_to_str(value)
    if isinstance(value, PretrainedConfig):
        return value.to_dict()
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _plain(value.to_dict())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class PretrainedConfig:
    """Base class of model configurations.

    Every keyword argument becomes an attribute; names in `attribute_map` are aliases of the attribute
    they map to (reading and writing). Subclasses set `model_type` and declare their parameters.
    """

    model_type: str = ""
    is_composition: bool = False
    attribute_map: dict[str, str] = {}
    _support_list: list[str] = []

    def __setattr__(self, key: str, value: Any) -> None:
        key = type(self).attribute_map.get(key, key)
        super().__setattr__(key, value)

    def __getattr__(self, key: str) -> Any:
        # only called when normal lookup fails: resolve aliases here
        alias = type(self).attribute_map.get(key)
        if alias is not None:
            return getattr(self, alias)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def __init__(self, **kwargs: Any) -> None:
        self._name_or_path = str(kwargs.pop("name_or_path", ""))
        self.checkpoint_name_or_path = kwargs.pop("checkpoint_name_or_path", None)
        self.mindformers_version = kwargs.pop("mindformers_version", None)
        self.tokenizer_class = kwargs.pop("tokenizer_class", None)
        self.architectures = kwargs.pop("architectures", None)
        self.is_encoder_decoder = kwargs.pop("is_encoder_decoder", False)
        self.is_sample_acceleration = kwargs.pop("is_sample_acceleration", None)
        kwargs.pop("_commit_hash", None)
        kwargs.pop("rl_config", None)
        kwargs.pop("model_type", None)  # a class attribute, written by to_dict
        kwargs.pop("type", None)  # the registry name in a YAML block
        for key, value in kwargs.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ names
    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str) -> None:
        self._name_or_path = str(value)

    # ------------------------------------------------------------------ dicts and JSON
    def to_dict(self) -> dict[str, Any]:
        """Every attribute as plain Python values, plus `model_type`; dtypes become strings."""
        out = {k: _plain(copy.deepcopy(v)) for k, v in self.__dict__.items() if not k.startswith("_")}
        out["model_type"] = self.model_type
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the values that differ from the class defaults (what a saved config needs)."""
        full = self.to_dict()
        try:
            defaults = type(self)().to_dict()
        except Exception:  # a subclass without defaults for every parameter
            defaults = PretrainedConfig().to_dict()
        out = {k: v for k, v in full.items() if k not in defaults or defaults[k] != v}
        out["model_type"] = self.model_type
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(json_file_path).write_text(self.to_json_string(use_diff=use_diff), encoding="utf-8")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """Build from a dict; `kwargs` override its values. `return_unused_kwargs=True` returns `(config, {})`."""
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config = cls(**{**dict(config_dict), **kwargs})
        return (config, {}) if return_unused else config

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike):
        return cls.from_dict(cls._read_json(json_file))

    @staticmethod
    def _read_json(path: str | os.PathLike) -> dict[str, Any]:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"config file {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a JSON object, got {type(data).__name__}")
        return data

    @classmethod
    def get_config_dict(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> tuple[dict[str, Any], dict]:
        path = Path(name_or_path)
        if path.is_dir():
            path = path / CONFIG_NAME
        return cls._read_json(path), kwargs

    # ------------------------------------------------------------------ YAML (MindFormers form)
    @staticmethod
    def read_model_config_from_yaml(path: str | os.PathLike) -> dict[str, Any]:
        """The `model.model_config` block of a MindFormers YAML file (with `type` removed)."""
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        block = data.get("model") if isinstance(data, dict) else None
        block = block.get("model_config") if isinstance(block, dict) else None
        if not isinstance(block, dict):
            raise ConfigError(f"{path}: expected a mapping at 'model.model_config' (MindFormers YAML layout)")
        block = dict(block)
        block.pop("type", None)
        block.pop("auto_register", None)
        arch = (data.get("model") or {}).get("arch")
        if isinstance(arch, dict) and arch.get("type") and not block.get("architectures"):
            block["architectures"] = [arch["type"]]
        return block

    @classmethod
    def from_pretrained(cls, yaml_name_or_path: str | os.PathLike, **kwargs: Any):
        """Read a config from a MindFormers `.yaml`, a `.json`, or a folder holding `config.json` or one `.yaml`.

        `kwargs` override values read from the file.
        """
        path = Path(yaml_name_or_path)
        if path.is_dir():
            if (path / CONFIG_NAME).is_file():
                path = path / CONFIG_NAME
            else:
                yamls = sorted(path.glob("*.yaml"))
                if len(yamls) != 1:
                    raise ConfigError(
                        f"{yaml_name_or_path}: expected {CONFIG_NAME} or exactly one .yaml file in the folder, "
                        f"found {[p.name for p in yamls] or 'neither'}"
                    )
                path = yamls[0]
        if path.suffix in (".yaml", ".yml"):
            config_dict = cls.read_model_config_from_yaml(path)
        elif path.suffix == ".json":
            config_dict = cls._read_json(path)
        elif not path.exists():
            raise ConfigError(f"config {yaml_name_or_path!r} does not exist (expected a .yaml, a .json or a folder)")
        else:
            raise ConfigError(f"config {yaml_name_or_path!r}: expected a .yaml or .json file or a folder")
        config = cls.from_dict(config_dict, **kwargs)
        config.name_or_path = str(yaml_name_or_path)
        return config

    def save_pretrained(
        self,
        save_directory: str | os.PathLike | None = None,
        save_name: str = "model",
        save_json: bool = True,
        save_yaml: bool = True,
        arch: str | None = None,
    ) -> None:
        """Write `config.json` and/or `<save_name>.yaml` (MindFormers layout) into `save_directory`.

        An existing YAML file of that name is merged: only its `model` block is replaced.
        """
        directory = Path(save_directory if save_directory is not None else "./checkpoint_save")
        directory.mkdir(parents=True, exist_ok=True)
        arch = arch or (self.architectures[0] if self.architectures else None)
        if save_json:
            data = self.to_dict()
            if arch and not data.get("architectures"):
                data["architectures"] = [arch]
            (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if save_yaml:
            yaml_path = directory / f"{save_name}.yaml"
            existing = {}
            if yaml_path.is_file():
                existing = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
            model_config = {"type": type(self).__name__, **self.to_dict()}
            model_config.pop("model_type", None)
            model_block: dict[str, Any] = {"model_config": model_config}
            if arch:
                model_block["arch"] = {"type": arch}
            existing["model"] = model_block
            yaml_path.write_text(yaml.safe_dump(existing, sort_keys=False), encoding="utf-8")

    # ------------------------------------------------------------------ misc
    @classmethod
    def get_support_list(cls) -> list[str]:
        return list(cls._support_list)

    @classmethod
    def show_support_list(cls) -> None:
        print(f"support list of {cls.__name__}: {cls._support_list}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(use_diff=False)}"
