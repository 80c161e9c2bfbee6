"""The YAML task configuration: `MindFormerConfig`.

Follows MindFormers' `mindformers/tools/register/config.py`: a dict with attribute access in which a
missing attribute reads as None, `base_config` inheritance (paths relative to the YAML's folder,
a list allowed, the current file winning), `merge_from_dict` with dotted keys and
`get_value`/`set_value`. Two deliberate differences: floats written `1e-5` load as floats (YAML 1.1
reads them as strings, a classic source of silent bugs), and a loaded file is validated against the
run-mode template of `template.py`, so a typo in a strict section stops the run with the file, the
dotted key and the closest valid keys.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from torchformers.errors import ConfigError
from torchformers.tools.register.template import apply_template

__all__ = ["ConfigError", "DictConfig", "MindFormerConfig", "load_yaml", "parse_value"]

MAX_YAML_DEPTH = 10




class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` / `3E+2` as floats (YAML 1.2 float syntax)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict:
    """Read one YAML file safely; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    depth = _depth(data)
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(f"{path}: nesting depth {depth} exceeds the limit of {MAX_YAML_DEPTH}")
    return data


def _depth(obj, level: int = 0) -> int:
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level) for v in obj), default=level)
    return level


class DictConfig(dict):
    """A dict whose keys read as attributes; a missing attribute is None (MindFormers semantics)."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)
        return self.get(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        self.pop(key, None)

    def __deepcopy__(self, memo):
        return type(self)._from_plain(copy.deepcopy(self.to_dict(), memo))

    @classmethod
    def _from_plain(cls, data: Mapping) -> DictConfig:
        obj = cls.__new__(cls)
        dict.__init__(obj)
        for k, v in data.items():
            obj[k] = _wrap(v)
        return obj

    def to_dict(self) -> dict:
        """A plain-dict deep copy (nested configs become dicts)."""
        return {k: _unwrap(v) for k, v in self.items()}


def _wrap(value):
    if isinstance(value, DictConfig):
        return value
    if isinstance(value, Mapping):
        return DictConfig._from_plain(value)
    return value


def _unwrap(value):
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return copy.deepcopy(value)


class MindFormerConfig(DictConfig):
    """A task configuration from YAML files and keyword overrides.

    `MindFormerConfig("x.yaml", run_mode="finetune")` loads the file (and its `base_config` chain),
    applies keyword overrides, then fills defaults and validates strict sections for the run mode
    (`template.py`). `MindFormerConfig(some_dict)` or keywords alone build a config without a template.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        cfg: dict = {}
        source: Path | None = None
        for arg in args:
            if isinstance(arg, (str, Path)) and str(arg).endswith((".yaml", ".yml")):
                source = Path(arg).resolve()
                _merge_into(cfg, self._file_to_dict(source))
            elif isinstance(arg, Mapping):
                _merge_into(cfg, copy.deepcopy(dict(arg)))
            else:
                raise ConfigError(f"MindFormerConfig takes YAML paths or mappings, got {arg!r}")
        _merge_into(cfg, copy.deepcopy(kwargs))
        if source is not None:

            cfg = apply_template(cfg, source=source)
        for key in sorted(cfg):  # MindFormers sorts top-level keys on load
            self[key] = _wrap(cfg[key])
        # the YAML file this config came from, for error messages (an attribute, not a key)
        object.__setattr__(self, "source_file", str(source) if source is not None else None)

    @staticmethod
    def _file_to_dict(path: Path, _seen: tuple = ()) -> dict:
        if path in _seen:
            chain = " -> ".join(str(p) for p in (*_seen, path))
            raise ConfigError(f"base_config cycle: {chain}")
        data = load_yaml(path)
        bases = data.pop("base_config", None)
        if bases is None:
            return data
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: base_config must be a file name or a list of file names, got {bases!r}")
        merged: dict = {}
        for base in bases:
            base_path = (path.parent / base).resolve()
            if not base_path.is_file():
                raise ConfigError(f"{path}: base_config file {base!r} not found (looked at {base_path})")
            _merge_into(merged, MindFormerConfig._file_to_dict(base_path, (*_seen, path)))
        _merge_into(merged, data)
        return merged

    def merge_from_dict(self, options: Mapping[str, Any]) -> None:
        """Merge `{"a.b.c": value}` style options (dotted keys) into the config."""
        for full_key, value in options.items():
            node = self
            keys = full_key.split(".")
            for key in keys[:-1]:
                if not isinstance(node.get(key), Mapping):
                    node[key] = DictConfig()
                node = node[key]
            node[keys[-1]] = _wrap(value)

    def get_value(self, dotted_key: str, default: Any = None) -> Any:
        node: Any = self
        for key in dotted_key.split("."):
            if not isinstance(node, Mapping) or key not in node:
                return default
            node = node[key]
        return node

    def set_value(self, dotted_key: str, value: Any) -> None:
        self.merge_from_dict({dotted_key: value})

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False, allow_unicode=True, default_flow_style=False)
        os.replace(tmp, path)


def _merge_into(dst: dict, src: Mapping) -> dict:
    """Recursively merge `src` into `dst`; values of `src` win."""
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), Mapping):
            dst[key] = _merge_into(dict(dst[key]), value)
        else:
            dst[key] = value
    return dst


def parse_value(text: str) -> Any:
    """Parse a command-line value the way MindFormers does: int, float, True/False, JSON, else string."""
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if (
            number == number
            and abs(number) != float("inf")
            and number == int(number)
            and re.fullmatch(r"[-+]?\d+", text.strip())
        ):
            return int(number)
        return number
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    try:
        return json.loads(text)
    except ValueError:
        return text
