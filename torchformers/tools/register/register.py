"""The class registry: YAML `type:` names resolve here, and only here.

Mirrors MindFormers' `mindformers/tools/register/register.py`: `MindFormerModuleType` holds the 27
module types, `MindFormerRegister` maps `(module_type, name) -> class`. As in MindFormers, registering
a class under a name already taken replaces the earlier class (logged at debug level), `register` and
`register_cls` take `legacy` and `search_names`, and user errors are also the builtin types MindFormers
raises (`TypeError`, `KeyError`, `EnvironmentError`). One difference: `auto_register` imports the user's
file straight from the register path (as a module of a package, so relative imports work) instead of
copying it into a cache under the current directory. Model families (`register_model_spec`) are ours: a
different family under a taken family name stays an error.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from torchformers.errors import RegistryError
from torchformers.tools.logger import logger
from torchformers.tools.register.spec import ModelSpec

__all__ = [
    "ConfigTypeError",
    "MindFormerModuleType",
    "MindFormerRegister",
    "MissingTypeError",
    "RegisterPathError",
    "RegistryError",
]

REGISTER_PATH_ENV = "REGISTER_PATH"
NEW_CLASS_PREFIX = "mcore_"  # MindFormers' key prefix for non-legacy (mcore) MODELS and CONFIG classes


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
    search_names_map: dict[tuple[str, str], str] = {}  # (module_type, search name) -> registered name
    model_specs: dict[str, ModelSpec] = {}

    @classmethod
    def register(
        cls,
        module_type: str = MindFormerModuleType.TOOLS,
        alias: str | None = None,
        legacy: bool = True,
        search_names=None,
    ):
        """Decorator: `@MindFormerRegister.register(MindFormerModuleType.MODELS)`; see `register_cls`."""

        def wrapper(register_class):
            cls.register_cls(
                register_class, module_type=module_type, alias=alias, legacy=legacy, search_names=search_names
            )
            return register_class

        return wrapper

    @classmethod
    def register_cls(
        cls,
        register_class,
        module_type: str = MindFormerModuleType.TOOLS,
        alias: str | None = None,
        legacy: bool = True,
        search_names=None,
    ):
        """Register `register_class` under `alias` or its own `__name__`; returns the class.

        A different class under a name already taken replaces the earlier one (MindFormers does the same
        silently; here a debug line says so). `legacy=False` marks a MindFormers mcore class: MODELS and
        CONFIG classes are then stored under `mcore_<name>`, as MindFormers does (lookups here are always
        the legacy ones, so such a class is found by that prefixed name). `search_names` (a string or a
        list, tuple or set of strings) are further names that find the class.
        """
        name = _prefixed(module_type, alias if alias is not None else register_class.__name__, legacy)
        table = cls.registry.setdefault(module_type, {})
        existing = table.get(name)
        if existing is not None and existing is not register_class:
            logger.debug(
                "%s registry: %r now names %s.%s (was %s.%s)", module_type, name, register_class.__module__,
                register_class.__qualname__, existing.__module__, existing.__qualname__,
            )  # fmt: skip
        table[name] = register_class
        if search_names is None:
            names = []
        elif isinstance(search_names, str):
            names = [search_names]
        elif isinstance(search_names, (list, tuple, set)) and all(isinstance(n, str) for n in search_names):
            names = list(search_names)
        else:
            raise RegistryError(
                f"register {register_class.__name__}: search_names must be a string or a list, tuple or set of "
                f"strings, got {search_names!r}"
            )
        for search_name in names:
            cls.search_names_map[(module_type, _prefixed(module_type, search_name, legacy))] = name
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
        return cls._registered_name(module_type, class_name) in cls.registry.get(module_type, {})

    @classmethod
    def _registered_name(cls, module_type: str, class_name: str) -> str:
        """The registry key a lookup of `class_name` uses: the name itself, or the class a search name maps to."""
        table = cls.registry.get(module_type, {})
        if class_name not in table and (module_type, class_name) in cls.search_names_map:
            return cls.search_names_map[(module_type, class_name)]
        return class_name

    @classmethod
    def get_cls(cls, module_type: str, class_name: str):
        """Return the class registered as `class_name`, or raise naming what is registered."""
        table = cls.registry.get(module_type, {})
        key = cls._registered_name(module_type, class_name) if isinstance(class_name, str) else class_name
        if key in table:
            return table[key]
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
            raise ConfigTypeError(
                f"a {module_type} config must be a mapping with a 'type' key, got {type(cfg).__name__}: {cfg!r}"
            )
        if "auto_register" in cfg:
            cls.auto_register(_pop(cfg, "auto_register"), module_type)
        if "type" not in cfg:
            raise MissingTypeError(
                f"the {module_type} config {dict(cfg)!r} has no 'type' key (expected the class name)"
            )
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
            raise RegisterPathError(
                f"auto_register: {class_reference!r} needs a register path: pass --register_path DIR to "
                f"run_mindformer.py or set the environment variable {REGISTER_PATH_ENV}"
            )
        folder = Path(register_path).expanduser().resolve()
        if not folder.is_dir():
            raise RegisterPathError(
                f"auto_register: the register path {str(folder)!r} (environment variable {REGISTER_PATH_ENV}) "
                "is not a folder"
            )
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


def import_module_from_folder(folder: Path, module_file: str) -> ModuleType:
    """Import `folder/module_file.py` as a module of a package, so relative imports in it work.

    The package is the folder's dotted name below a `sys.path` entry when it has one (the repository
    root, as MindFormers' run_mindformer.py puts on `sys.path`: `research/x` -> `research.x.module_file`,
    the same module a `from research.x.module_file import C` elsewhere gets); else a package made for the
    folder (running its `__init__.py` when it has one). The module is also entered under its plain name
    (unless that name belongs to another file), and the folder goes on `sys.path`, so files that import
    their siblings by plain name, as MindFormers' research code does, get the same module. A module
    already imported from the same file is reused.
    """
    folder = Path(folder).resolve()
    path = folder / f"{module_file}.py"
    if not path.is_file():
        raise RegistryError(f"auto_register: the file {path} does not exist (register path {folder})")
    package = _package_below_sys_path(folder)
    names = [module_file] + ([f"{package}.{module_file}"] if package else [])
    for name in names:
        loaded = sys.modules.get(name)
        if loaded is not None and _file_of(loaded) == path:
            return loaded
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    try:
        if package is None:
            package = _folder_package(folder)
        _SiblingFinder.install(folder, package)
        module = importlib.import_module(f"{package}.{module_file}")
    except Exception as err:
        raise RegistryError(f"auto_register: importing {path} failed: {type(err).__name__}: {err}") from err
    plain = sys.modules.get(module_file)
    if plain is None or _file_of(plain) == path:
        sys.modules[module_file] = module
    return module


class _SiblingFinder(importlib.abc.MetaPathFinder):
    """Plain-name imports of files in a register path (`import sibling`, the folder being on `sys.path`)
    resolve to the module the folder's package holds (`research.x.sibling`), so each file is one module.

    Only a name the ordinary path search would find in that folder is taken over, so what a plain import
    finds does not change, only under which name it is loaded.
    """

    folders: dict[Path, str] = {}  # register folder -> its package name

    @classmethod
    def install(cls, folder: Path, package: str) -> None:
        cls.folders[folder] = package
        if not any(isinstance(finder, cls) for finder in sys.meta_path):
            sys.meta_path.insert(0, cls())

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or "." in fullname or not self.folders:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        package = self.folders.get(origin.parent) if origin is not None and origin.suffix == ".py" else None
        if package is None or origin.name == "__init__.py":
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"{package}.{fullname}"))


class _AliasLoader(importlib.abc.Loader):
    """Loads a plain name as the already importable package module `target` (see `_SiblingFinder`)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass  # create_module returned the target module, already executed


def _file_of(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _package_below_sys_path(folder: Path) -> str | None:
    """`folder`'s dotted name below the highest `sys.path` entry it lies under (every part an identifier,
    the top name found there by the import system), or None."""
    best = None
    for entry in sys.path:
        try:
            root = Path(entry or os.getcwd()).resolve()
            parts = folder.relative_to(root).parts
        except (ValueError, OSError):
            continue
        if not parts or not all(part.isidentifier() for part in parts) or (best and len(parts) <= len(best)):
            continue
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            continue
        locations = [str(Path(loc).resolve()) for loc in (spec.submodule_search_locations or [])] if spec else []
        if str(root / parts[0]) in locations:
            best = parts
    return ".".join(best) if best else None


def _folder_package(folder: Path) -> str:
    """A package for `folder` outside every `sys.path` entry, named after it; returns the name."""
    name = "_register_path_" + re.sub(r"\W", "_", str(folder)).strip("_")
    if name in sys.modules:
        return name
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        package = ModuleType(name, f"the register path {folder}")
        package.__path__ = [str(folder)]
        package.__package__ = name
        sys.modules[name] = package
    return name


class ConfigTypeError(RegistryError, TypeError):
    """A config block is not a mapping (a TypeError, as in MindFormers)."""


class MissingTypeError(RegistryError, KeyError):
    """A config block has no `type` key (a KeyError, as in MindFormers)."""

    def __str__(self) -> str:  # the message itself, not KeyError's quoted repr of it
        return str(self.args[0]) if self.args else ""


class RegisterPathError(RegistryError, OSError):
    """`auto_register` has no usable register path (an EnvironmentError, as in MindFormers)."""


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
    """The same class defined twice (a module imported again, or one file imported under two module names,
    e.g. `research.x.mod` and `mod`): not a conflict."""
    if a.__qualname__ != b.__qualname__:
        return False
    if a.__module__ == b.__module__:
        return True
    files = [_file_of(sys.modules[c.__module__]) if c.__module__ in sys.modules else None for c in (a, b)]
    return files[0] is not None and files[0] == files[1]


def _prefixed(module_type: str, name: str, legacy: bool) -> str:
    if not legacy and module_type in (MindFormerModuleType.MODELS, MindFormerModuleType.CONFIG):
        return NEW_CLASS_PREFIX + name
    return name


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
