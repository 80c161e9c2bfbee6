"""`build_dataset` / `build_dataset_loader`, as MindFormers' `dataset/build_dataset.py` and
`dataset/dataloader/build_dataloader.py`: everything goes through `MindFormerRegister.get_instance_from_cfg`."""

from __future__ import annotations

from collections.abc import Mapping

from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["build_dataset", "build_dataset_loader"]


def _build(config, default_args, module_type, class_name, kwargs):
    if config is None and class_name is None:
        return None
    if config is None:
        return MindFormerRegister.get_instance(module_type, class_name, **kwargs)
    if not isinstance(config, Mapping):
        raise TypeError(f"a {module_type} config must be a mapping with 'type', got {type(config).__name__}")
    cfg = dict(config)
    cfg.update(kwargs)
    return MindFormerRegister.get_instance_from_cfg(cfg, module_type, default_args)


def build_dataset(
    config: Mapping | None = None,
    default_args: Mapping | None = None,
    module_type: str = MindFormerModuleType.DATASET,
    class_name: str | None = None,
    **kwargs,
):
    """Build a DATASET from `{type: CausalLanguageModelDataset, dataset_config: {...}}` (a `*_dataset_task` block)."""
    return _build(config, default_args, module_type, class_name, kwargs)


def build_dataset_loader(
    config: Mapping | None = None,
    default_args: Mapping | None = None,
    module_type: str = MindFormerModuleType.DATASET_LOADER,
    class_name: str | None = None,
    **kwargs,
):
    """Build a DATASET_LOADER from a `data_loader` block (`{type: MindDataset, dataset_dir, shuffle}`)."""
    return _build(config, default_args, module_type, class_name, kwargs)
