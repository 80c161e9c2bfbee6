"""`build_*` functions: every object named in YAML is built here, through the registry.

Each has MindFormers' signature `build_x(config=None, default_args=None, module_type=..., class_name=None,
**kwargs)`: with a config block `{type: Name, ...}` it calls `get_instance_from_cfg`; with no config and
a `class_name` it calls `get_instance(module_type, class_name, **kwargs)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torchformers.tools.register.register import MindFormerModuleType as T
from torchformers.tools.register.register import MindFormerRegister, RegistryError

__all__ = [
    "build_callback",
    "build_dataset",
    "build_dataset_loader",
    "build_lr",
    "build_metric",
    "build_model",
    "build_model_config",
    "build_optim",
    "build_pipeline",
    "build_processor",
    "build_tokenizer",
    "build_trainer",
    "build_wrapper",
]


def _build(module_type: str, config=None, default_args=None, class_name=None, **kwargs):
    if config is None:
        if class_name is None:
            return None
        return MindFormerRegister.get_instance(module_type, class_name, **kwargs)
    if not isinstance(config, Mapping):
        raise RegistryError(f"a {module_type} config must be a mapping with a 'type' key, got {config!r}")
    args = dict(default_args or {})
    args.update(kwargs)
    return MindFormerRegister.get_instance_from_cfg(config, module_type, default_args=args or None)


def build_model_config(config=None, default_args=None, module_type: str = T.CONFIG, class_name=None, **kwargs):
    """Build a model config (`model.model_config`), registered under CONFIG."""
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_model(config=None, default_args=None, module_type: str = T.MODELS, class_name=None, **kwargs):
    """Build `model: {model_config: {...}, arch: {type: ...}}`: the config first, then the arch with it."""
    if config is None:
        return _build(module_type, None, default_args, class_name, **kwargs)
    if "model_config" not in config or "arch" not in config:
        raise RegistryError("the model block needs both 'model_config' and 'arch' (model.model_config, model.arch)")
    model_config = config["model_config"]
    if isinstance(model_config, Mapping):  # else an already built config object
        model_config = build_model_config(model_config, default_args)
    return _build(module_type, config["arch"], {"config": model_config}, None, **kwargs)


def build_tokenizer(config=None, default_args=None, module_type: str = T.TOKENIZER, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_processor(config=None, default_args=None, module_type: str = T.PROCESSOR, class_name=None, **kwargs):
    """Build a processor; its `tokenizer` sub-block is built first and passed in."""
    if config is not None and isinstance(config.get("tokenizer"), Mapping):
        config = dict(config)
        config["tokenizer"] = build_tokenizer(config["tokenizer"])
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_optim(config=None, default_args=None, module_type: str = T.OPTIMIZER, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_lr(config=None, default_args=None, module_type: str = T.LR, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_callback(config=None, default_args=None, module_type: str = T.CALLBACK, class_name=None, **kwargs):
    """A list of callback blocks gives a list of callbacks."""
    if isinstance(config, list):
        return [_build(module_type, c, default_args, None, **kwargs) for c in config]
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_metric(config=None, default_args=None, module_type: str = T.METRIC, class_name=None, **kwargs):
    if isinstance(config, list):
        return [_build(module_type, c, default_args, None, **kwargs) for c in config]
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_dataset(config=None, default_args=None, module_type: str = T.DATASET, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_dataset_loader(
    config=None, default_args=None, module_type: str = T.DATASET_LOADER, class_name=None, **kwargs
):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_wrapper(config=None, default_args=None, module_type: str = T.WRAPPER, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_trainer(config=None, default_args=None, module_type: str = T.TRAINER, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)


def build_pipeline(config=None, default_args=None, module_type: str = T.PIPELINE, class_name=None, **kwargs):
    return _build(module_type, config, default_args, class_name, **kwargs)
