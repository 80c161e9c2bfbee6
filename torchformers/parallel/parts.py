"""The parts of a model that parallelism applies to, read from its registered `ModelSpec`.

The parallel code never spells a model's module names: the family's `ParallelSpec`
(`torchformers.tools.register.spec`) names them as dotted paths relative to the model (the decoder
layers, the modules only the first or last pipeline stage runs, the embedding, head and final norm,
the per-layer tensor-parallel plan), as torchtitan's `TrainSpec` does for its models.
"""

from __future__ import annotations

from torch import nn

from torchformers.errors import ConfigError
from torchformers.tools.register import MindFormerRegister, ParallelSpec

__all__ = ["decoder_layers", "layer_container", "parallel_spec_of", "set_submodule", "submodule_or_none"]


def parallel_spec_of(model: nn.Module, what: str = "parallelism") -> ParallelSpec:
    """The `ParallelSpec` of `model`'s registered family; a ConfigError naming the class when it has none."""
    spec = MindFormerRegister.model_spec_of(model)
    if spec is None:
        known = ", ".join(sorted(MindFormerRegister.model_specs)) or "none"
        raise ConfigError(
            f"{what}: {type(model).__name__} belongs to no registered model family (known: {known}); "
            "a family registers a ModelSpec with MindFormerRegister.register_model_spec to say where "
            "its layers, embedding and head are"
        )
    return spec.parallel


def submodule_or_none(model: nn.Module, path: str | None) -> nn.Module | None:
    """The module at dotted `path`, or None when the path is unset or a part of it is absent (a pipeline
    stage holds only some of the modules)."""
    if not path:
        return None
    module: nn.Module | None = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def set_submodule(model: nn.Module, path: str, module: nn.Module | None) -> None:
    """Replace (or, with None, drop) the module at dotted `path`, keeping every other parameter name."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def layer_container(model: nn.Module, what: str = "parallelism") -> nn.ModuleList | nn.ModuleDict:
    """The spec's `layers` container: a `ModuleList`, or a `ModuleDict` of the layers a pipeline stage keeps."""
    path = parallel_spec_of(model, what).layers
    layers = submodule_or_none(model, path)
    if not isinstance(layers, (nn.ModuleList, nn.ModuleDict)):
        raise ConfigError(
            f"{what}: the ModelSpec of {type(model).__name__} names {path!r} as its layers, but the model "
            f"holds {type(layers).__name__} there (expected an nn.ModuleList)"
        )
    return layers


def decoder_layers(model: nn.Module, what: str = "parallelism") -> list[nn.Module]:
    """The repeated blocks named by the spec's `layers`, in order."""
    layers = layer_container(model, what)
    return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)
