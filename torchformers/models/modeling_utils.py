"""`PretrainedModel`: the base class of every model (MindFormers `mindformers/models/modeling_utils.py`).

It holds `config` and `generation_config`, saves and loads a folder (config + safetensors, sharded
with a Hugging Face style `model.safetensors.index.json` when large), and loads weights through the
one loader (`torchformers.checkpoint.loader.load_state_into`), which reports missing, unexpected and
shape-mismatched parameter names and renames Hugging Face names through the model's `hf_key_map`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchformers.checkpoint import save_checkpoint
from torchformers.checkpoint.loader import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    LoadReport,
    load_state_into,
    load_weights,
)
from torchformers.errors import CheckpointError
from torchformers.generation.generation_config import GenerationConfig
from torchformers.generation.text_generator import GenerationMixin
from torchformers.models.configuration_utils import PretrainedConfig
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["CheckpointLoadError", "LoadReport", "PretrainedModel", "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME"]


# the loader's error, under the name callers have caught since before the one error tree
CheckpointLoadError = CheckpointError


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size: expected bytes or a size such as '2GB', got {size!r}")
    units = {None: 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(match.group(1)) * units[match.group(2).lower() if match.group(2) else None])


class PretrainedModel(nn.Module, GenerationMixin):
    """Base class of models: `config`, `generation_config`, checkpoint loading, save/load of folders.

    Subclasses set `config_class`, optionally `hf_key_map` (a `KeyMap`, Hugging Face <-> native names),
    `_tied_weights_keys` (names that may be absent from a checkpoint when tied) and
    `_keys_to_ignore_on_load_unexpected` (regexes), build their modules, then call `post_init()`.
    """

    config_class: type[PretrainedConfig] = PretrainedConfig
    base_model_prefix: str = ""
    main_input_name: str = "input_ids"
    hf_key_map = None
    _support_list: list[str] = []
    _tied_weights_keys: list[str] = []
    _keys_to_ignore_on_load_missing: list[str] = []
    _keys_to_ignore_on_load_unexpected: list[str] = []

    def __init__(self, config: PretrainedConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(config, PretrainedConfig):
            raise TypeError(
                f"{type(self).__name__}(config): expected a PretrainedConfig instance, got {type(config).__name__}"
            )
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None

    framework = "pt"

    def post_init(self) -> None:
        """Initialise weights (subclasses define `_init_weights(module)`)."""
        init = getattr(self, "_init_weights", None)
        if init is not None:
            with torch.no_grad():
                self.apply(init)

    @classmethod
    def can_generate(cls) -> bool:
        return "prepare_inputs_for_generation" in {k for c in cls.__mro__ if c is not PretrainedModel for k in vars(c)}

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not implement prepare_inputs_for_generation")

    def prepare_inputs_for_predict_layout(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple:
        """Inputs of the predict shapes on the meta device, so a model can be built and sharded before any
        weight is loaded. Models that support parallel predict must implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement prepare_inputs_for_predict_layout")

    # ------------------------------------------------------------------ weights loading
    def load_checkpoint(
        self,
        checkpoint: str | os.PathLike | dict[str, torch.Tensor] | PretrainedConfig | None = None,
        *,
        strict: bool = True,
        allow_pickle: bool = False,
    ) -> LoadReport:
        """Load weights from a file, a folder, a state dict, or `config.checkpoint_name_or_path`.

        Native (MindFormers) names load as they are; Hugging Face names are renamed through
        `hf_key_map`. Missing, unexpected and shape-mismatched names raise `CheckpointLoadError`
        listing them, or, with `strict=False`, are logged as a warning and skipped.
        A tied `lm_head.weight` may be absent. Returns a `LoadReport` (see `checkpoint.loader`).
        """
        if checkpoint is None or isinstance(checkpoint, PretrainedConfig):
            config = checkpoint or self.config
            checkpoint = getattr(config, "checkpoint_name_or_path", None)
            if not checkpoint:
                raise CheckpointLoadError("load_checkpoint: no path given and config.checkpoint_name_or_path is empty")
        if isinstance(checkpoint, dict):
            return load_state_into(self, checkpoint, strict=strict)
        return load_weights(self, checkpoint, strict=strict, allow_pickle=allow_pickle)

    # ------------------------------------------------------------------ folders
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        save_name: str = "model",
        max_shard_size: int | str = "2GB",
        save_json: bool = True,
        save_yaml: bool = True,
    ) -> None:
        """Write the config (`config.json` and `<save_name>.yaml`) and the weights (`<save_name>.safetensors`,
        or `<save_name>-0000i-of-0000n.safetensors` shards plus `<save_name>.safetensors.index.json` above
        `max_shard_size`). Tied copies (e.g. `lm_head.weight`) are written once."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory, save_name=save_name, save_json=save_json, save_yaml=save_yaml,
                                    arch=type(self).__name__)  # fmt: skip
        state = self.state_dict()
        if getattr(self.config, "tie_word_embeddings", False):
            for key in self._tied_weights_keys:
                state.pop(key, None)
        limit = _parse_size(max_shard_size)
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > limit:
                shards.append({})
                size = 0
            shards[-1][name] = tensor.detach().cpu()
            size += nbytes
        metadata = {"format": "pt"}
        if len(shards) == 1:
            save_checkpoint(shards[0], directory / f"{save_name}.safetensors", metadata=metadata)
            return
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = f"{save_name}-{i:05d}-of-{len(shards):05d}.safetensors"
            save_checkpoint(shard, directory / file, metadata=metadata)
            weight_map.update(dict.fromkeys(shard, file))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / f"{save_name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_dir: str | os.PathLike, *, strict: bool = True, **kwargs: Any):
        """Build from a folder holding a config (`config.json` or one `.yaml`) and safetensors weights.

        Hugging Face folders (config.json + model.safetensors with HF names) load too. Called on
        `PretrainedModel` itself, the class is taken from the config's `architectures` through the
        MODELS registry. `kwargs` override config values.
        """
        path = Path(pretrained_model_name_or_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"from_pretrained: {path} is not a folder (expected config + safetensors)")
        model_cls = cls
        if cls is PretrainedModel:
            raw = PretrainedConfig.from_pretrained(path)
            arch = (raw.architectures or [None])[0]
            if not arch:
                raise ValueError(f"from_pretrained: the config in {path} names no architecture ('architectures')")
            model_cls = MindFormerRegister.get_cls(MindFormerModuleType.MODELS, arch)
        config = model_cls.config_class.from_pretrained(path, **kwargs)
        model = model_cls(config)
        model.load_checkpoint(path, strict=strict)
        model.eval()
        return model

    @classmethod
    def get_support_list(cls) -> list[str]:
        return list(cls._support_list)

    @classmethod
    def show_support_list(cls) -> None:
        print(f"support list of {cls.__name__}: {cls._support_list}")
