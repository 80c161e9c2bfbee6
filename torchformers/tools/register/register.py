"""The class registry: YAML `type:` names resolve here, and only here.

Mirrors MindFormers' `mindformers/tools/register/register.py`: `MindFormerModuleType` holds the 27
module types, `MindFormerRegister` maps `(module_type, name) -> class`. Two differences, both for
safety: registering a *different* class under a name already taken is an error (re-registering the
same class, e.g. on a module reload, is fine), and `auto_register` imports the user's file straight
from the register path instead of copying it into a cache under the current directory.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from torchformers.errors import RegistryError
from torchformers.tools.logger import logger
from torchformers.tools.register.spec import ModelSpec

__all__ = ["MindFormerModuleType", "MindFormerRegister", "RegistryError"]

REGISTER_PATH_ENV = "REGISTER_PATH"


class MindFormerModuleType:
    """Module types of the registry (the same 27 string constants as MindFormers)."""

    TRAINER = "trainer"
    PIPELINE = "pipeline"
    PROCESSOR = "processor"
    TOKENIZER = "tokenizer"
    DATASET = "dataset"
    MASK_POLICY = "mask_policy"
    DATASET_LOADER = "dataset_loader"
    DATASET_SAMPLER = "dataset_sampler"
    TRANSFORMS = "transforms"
    ENCODER = "encoder"
    MODELS = "models"
    MODULES = "modules"
    TRANSFORMER = "transformer"
    BASE_LAYER = "base_layer"
    CORE = "core"
    HEAD = "head"
    LOSS = "loss"
    LR = "lr"
    OPTIMIZER = "optimizer"
    CONTEXT = "context"
    CALLBACK = "callback"
    WRAPPER = "wrapper"
    METRIC = "metric"
    CONFIG = "config"
    TOOLS = "tools"
    FEATURE_EXTRACTOR = "feature_extractor"
    DATA_HANDLER = "data_handler"

    @classmethod
    def all(cls) -> list[str]:
        return [v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)]


class MindFormerRegister:
    """Registry of classes by module type and name (all methods are classmethods)."""

    registry: dict[str, dict[str, type]] = {}
    model_specs: dict[str, ModelSpec] = {}

    @classmethod
    def register(cls, module_type: str = MindFormerModuleType.TOOLS, alias: str | None = None):
        """Decorator: `@MindFormerRegister.register(MindFormerModuleType.MODELS)`."""

        def wrapper(register_class):
            cls.register_cls(register_class, module_type=module_type, alias=alias)
            return register_class

        return wrapper

    @classmethod
    def register_cls(cls, register_class, module_type: str = MindFormerModuleType.TOOLS, alias: str | None = None):
        """Register `register_class` under `alias` or its own `__name__`."""
        name = alias if alias is not None else register_class.__name__
        table = cls.registry.setdefault(module_type, {})
        existing = table.get(name)
        if existing is not None and existing is not register_class and not _same_class(existing, register_class):
            raise RegistryError(
                f"{module_type} registry: the name {name!r} is already taken by "
                f"{existing.__module__}.{existing.__qualname__}; cannot register "
                f"{register_class.__module__}.{register_class.__qualname__} under it (pass alias= to rename)"
            )
        table[name] = register_class
        return register_class

    @classmethod
    def register_model_spec(cls, spec: ModelSpec) -> ModelSpec:
        """Register a model family (see `ModelSpec`): the spec under its name, and its config, model and
        tokenizer classes under CONFIG, MODELS and TOKENIZER. Registering the same family again (a module
        imported twice) replaces the earlier spec; returns `spec`."""
        if not isinstance(spec, ModelSpec):
            raise RegistryError(f"register_model_spec expects a ModelSpec, got {type(spec).__name__}")
        existing = cls.model_specs.get(spec.name)
        if existing is not None and existing is not spec:
            if not _same_class(existing.config_class, spec.config_class):
                raise RegistryError(
                    f"model family {spec.name!r} is already registered by {existing.config_class.__module__}; "
                    "choose another name"
                )
            logger.debug("model family %r registered again; the new spec replaces the earlier one", spec.name)
        cls.register_cls(spec.config_class, MindFormerModuleType.CONFIG)
        for model_class in spec.model_classes:
            cls.register_cls(model_class, MindFormerModuleType.MODELS)
        for tokenizer_class in spec.tokenizer_classes:
            cls.register_cls(tokenizer_class, MindFormerModuleType.TOKENIZER)
        cls.model_specs[spec.name] = spec
        return spec

    @classmethod
    def get_model_spec(cls, name: str, what: str = "model") -> ModelSpec:
        """The spec registered as `name`; raises RegistryError listing the known families."""
        if name in cls.model_specs:
            return cls.model_specs[name]
        known = ", ".join(sorted(cls.model_specs)) or "none"
        raise RegistryError(
            f"{what} {name!r} is not a registered model family{_did_you_mean(name, cls.model_specs)} "
            f"(known: {known}; a family outside the library registers itself with "
            "MindFormerRegister.register_model_spec in a file under --register_path)"
        )

    @classmethod
    def find_model_spec(cls, predicate) -> ModelSpec | None:
        """The first registered spec for which `predicate(spec)` is true, or None."""
        return next((spec for spec in cls.model_specs.values() if predicate(spec)), None)

    @classmethod
    def model_spec_of(cls, obj) -> ModelSpec | None:
        """The spec whose model or config class is `obj`'s class (or a base of it), or None."""
        klass = obj if isinstance(obj, type) else type(obj)
        for base in klass.__mro__:
            for spec in cls.model_specs.values():
                if base is spec.config_class or base in spec.model_classes:
                    return spec
        return None

    @classmethod
    def is_exist(cls, module_type: str, class_name: str | None = None) -> bool:
        if class_name is None:
            return module_type in cls.registry
        return class_name in cls.registry.get(module_type, {})

    @classmethod
    def get_cls(cls, module_type: str, class_name: str):
        """Return the class registered as `class_name`, or raise naming what is registered."""
        table = cls.registry.get(module_type, {})
        if class_name in table:
            return table[class_name]
        known = ", ".join(sorted(table)) or "nothing"
        hint = _did_you_mean(class_name, table)
        raise RegistryError(
            f"Can't find class type {module_type} class name {class_name} in class registry"
            f"{hint} (registered {module_type} classes: {known}). A class outside the library needs "
            f"'auto_register: <module_file>.{class_name}' in its YAML block and --register_path DIR."
        )

    @classmethod
    def get_instance_from_cfg(cls, cfg: Mapping, module_type: str = MindFormerModuleType.TOOLS, default_args=None):
        """Build an instance from a config block `{type: Name, **kwargs}`.

        `auto_register` in the block is honoured (and removed from it). `type` may be a registered
        name or a class. `default_args` override values of the same key in the block.
        """
        if not isinstance(cfg, Mapping):
            raise RegistryError(f"a {module_type} config must be a mapping with a 'type' key, got {type(cfg).__name__}")
        if "auto_register" in cfg:
            cls.auto_register(_pop(cfg, "auto_register"), module_type)
        if "type" not in cfg:
            raise RegistryError(f"the {module_type} config {dict(cfg)!r} has no 'type' key")
        args = {k: v for k, v in copy.copy(dict(cfg)).items()}
        if default_args is not None:
            args.update(dict(default_args))
        obj_type = args.pop("type")
        if isinstance(obj_type, str):
            obj_cls = cls.get_cls(module_type, obj_type)
        elif isinstance(obj_type, type):
            obj_cls = obj_type
        else:
            raise RegistryError(f"'type' of a {module_type} config must be a class name or a class, got {obj_type!r}")
        return _instantiate(obj_cls, args)

    @classmethod
    def get_instance(cls, module_type: str = MindFormerModuleType.TOOLS, class_name: str | None = None, **kwargs):
        if not isinstance(class_name, str):
            raise RegistryError(f"class_name must be a string, got {class_name!r}")
        return _instantiate(cls.get_cls(module_type, class_name), kwargs)

    @classmethod
    def auto_register(cls, class_reference: str, module_type: str = MindFormerModuleType.TOOLS):
        """Import `module_file.ClassName` from the register path and register the class.

        The register path comes from the environment variable `REGISTER_PATH`, which
        `run_mindformer.py --register_path DIR` sets. Returns the class.
        """
        if not isinstance(class_reference, str) or class_reference.count(".") != 1:
            raise RegistryError(f"auto_register expects 'module_file.ClassName' (one dot), got {class_reference!r}")
        module_file, class_name = class_reference.split(".")
        register_path = os.environ.get(REGISTER_PATH_ENV, "")
        if not register_path:
            raise RegistryError(
                f"auto_register: {class_reference!r} needs a register path: pass --register_path DIR to "
                f"run_mindformer.py or set the environment variable {REGISTER_PATH_ENV}"
            )
        folder = Path(register_path).expanduser().resolve()
        if not folder.is_dir():
            raise RegistryError(f"auto_register: the register path {str(folder)!r} is not a folder")
        module = import_module_from_folder(folder, module_file)
        if not hasattr(module, class_name):
            defined = sorted(
                n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__
            )
            raise RegistryError(
                f"auto_register: {folder / (module_file + '.py')} has no class {class_name!r}"
                f" (classes defined there: {', '.join(defined) or 'none'})"
            )
        module_class = getattr(module, class_name)
        cls.register_cls(module_class, module_type=module_type)
        return module_class


def import_module_from_folder(folder: Path, module_file: str):
    """Import `folder/module_file.py` under its plain name, with `folder` on `sys.path`.

    The folder goes on `sys.path` so the user's file can import its siblings by plain name, the way
    MindFormers' research code does. A module of that name already imported from the same file is
    reused.
    """
    path = folder / f"{module_file}.py"
    if not path.is_file():
        raise RegistryError(f"auto_register: the file {path} does not exist (register path {folder})")
    loaded = sys.modules.get(module_file)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return loaded
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(module_file, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_file] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_file]
        raise RegistryError(f"auto_register: importing {path} failed: {type(err).__name__}: {err}") from err
    return module


class ArgumentError(RegistryError, TypeError):
    """A config block passes arguments its class does not take (a TypeError, and the user's mistake)."""


def _instantiate(obj_cls, args: dict):
    try:
        return obj_cls(**args)
    except TypeError as err:
        name = getattr(obj_cls, "__name__", str(obj_cls))
        if "argument" in str(err) and err.__traceback__ is not None and err.__traceback__.tb_next is None:
            # raised by the call itself (bad keyword names or counts), not from inside __init__
            raise ArgumentError(f"{name}: {err}") from err
        raise type(err)(f"{name}: {err}").with_traceback(err.__traceback__) from err
    except Exception as err:
        name = getattr(obj_cls, "__name__", str(obj_cls))
        message = f"{name}: {err}"
        try:
            new_err = type(err)(message)
        except Exception:  # exception types with other constructors
            raise RuntimeError(message) from err
        raise new_err.with_traceback(err.__traceback__) from err


def _pop(cfg, key):
    value = cfg[key]
    try:
        del cfg[key]
    except TypeError:  # immutable mapping: leave it as it is
        pass
    return value


def _same_class(a, b) -> bool:
    """The same class defined twice (a module imported again, e.g. by tests): not a conflict."""
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
