"""The run context: device, seed, output folder and (under torchrun) the process group.

MindFormers' `build_context` (`mindformers/core/context/build_context.py`) sets MindSpore's context
from the YAML `context` block; here the same block picks the torch device: `device_target` CPU or GPU
(None: GPU when one is available), `device_id` the GPU index (under torchrun, LOCAL_RANK wins).
Ascend (or NPU) has no PyTorch device here: it runs on what is there (GPU when available, else CPU) and
says so in the log. `torchformers.tools.context` re-exports these at MindFormers'
module path; the trainer imports them from here, below it.

`init_context(use_parallel, context_config, parallel_config)` with `ContextConfig` and
`ParallelContextConfig` is MindFormers' scripting form of the same set-up (`mindformers/core/context`,
`mindformers/trainer/config_args.py`): it returns `(rank_id, device_num)`. MindSpore-only keys (`mode`,
`max_device_memory`, `save_graphs`, `parallel_mode`, `full_batch`, ...) are stored and have no effect.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from torchformers.errors import ConfigError
from torchformers.parallel import init_distributed
from torchformers.tools.logger import logger, set_log_dir
from torchformers.tools.register.config import DictConfig
from torchformers.utils import get_rank, get_world_size

__all__ = ["ContextConfig", "ParallelContextConfig", "build_context", "init_context", "resolve_device", "set_seed"]


def resolve_device(device_target: str | None, device_id: int | None = None) -> torch.device:
    """`context.device_target` / `device_id` -> the torch device of this process."""
    available = "GPU" if torch.cuda.is_available() else "CPU"
    target = (device_target or available).upper()
    if target in ("ASCEND", "NPU"):
        logger.info("context.device_target %s has no effect on PyTorch: running on %s", device_target, available)
        target = available
    if target == "CPU":
        return torch.device("cpu")
    if target in ("GPU", "CUDA"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "context.device_target is GPU but torch sees no CUDA device; use CPU or a CUDA build of torch"
            )
        index = int(os.environ.get("LOCAL_RANK", device_id or 0))
        return torch.device("cuda", index)
    raise ConfigError(f"context.device_target {device_target!r} is not supported; expected CPU or GPU")


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_context(config) -> torch.device:
    """Set up device, seed and logging for a run; returns the device and stores it as `config.device`."""
    context = config.get("context") or {}
    device = resolve_device(context.get("device_target"), context.get("device_id"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.get("seed") is not None:
        set_seed(int(config.seed))
    if config.get("use_parallel"):
        init_distributed(device)
    output_dir = config.get("output_dir") or "./output"
    os.environ["LOCAL_DEFAULT_PATH"] = str(output_dir)
    log_file = set_log_dir(output_dir)
    logger.info("run_mode %s on %s; log %s", config.get("run_mode"), device, log_file)
    object.__setattr__(config, "device", device)
    return device


class ContextConfig(DictConfig):
    """The YAML `context` block as an object (MindFormers' `ContextConfig`); keys read as attributes.

    `device_target` None picks GPU when one is available, else CPU (MindFormers' default is Ascend,
    which PyTorch cannot drive); `device_id` is the GPU index. Other keys are kept and have no effect.
    """

    def __init__(self, mode: int | str = 0, device_target: str | None = None, device_id: int = 0, **kwargs) -> None:
        super().__init__()
        self.update(mode=mode, device_target=device_target, device_id=device_id, **kwargs)


class ParallelContextConfig(DictConfig):
    """The YAML `parallel` block as an object (MindFormers' `ParallelContextConfig`); keys read as attributes.

    On PyTorch the process group comes from torchrun's environment; these keys are kept for the config
    and have no effect here (the layout is `parallel_config`: data/model parallel, pipeline stages).
    """

    def __init__(
        self,
        parallel_mode: int | str = 1,
        gradients_mean: bool = False,
        enable_alltoall: bool = False,
        full_batch: bool = True,
        search_mode: str = "sharding_propagation",
        enable_parallel_optimizer: bool = False,
        strategy_ckpt_save_file: str = "./ckpt_strategy.ckpt",
        **kwargs,
    ) -> None:
        super().__init__()
        self.update(
            parallel_mode=parallel_mode,
            gradients_mean=gradients_mean,
            enable_alltoall=enable_alltoall,
            full_batch=full_batch,
            search_mode=search_mode,
            enable_parallel_optimizer=enable_parallel_optimizer,
            strategy_ckpt_save_file=strategy_ckpt_save_file,
            **kwargs,
        )


def _as_block(value, block_cls: type[DictConfig], argument: str) -> DictConfig:
    if value is None:
        return block_cls()
    if isinstance(value, block_cls):
        return value
    if isinstance(value, dict):
        return block_cls(**value)
    raise ConfigError(
        f"init_context({argument}=...): expected a {block_cls.__name__} or a dict, got {type(value).__name__}"
    )


def init_context(use_parallel: bool = False, context_config=None, parallel_config=None) -> tuple[int, int]:
    """Pick and set this process's device (and join torchrun's process group when `use_parallel`).

    `context_config` / `parallel_config`: a `ContextConfig` / `ParallelContextConfig` or a dict of the
    YAML `context` / `parallel` keys. Returns `(rank_id, device_num)` as MindFormers does.
    """
    context = _as_block(context_config, ContextConfig, "context_config")
    _as_block(parallel_config, ParallelContextConfig, "parallel_config")
    device = resolve_device(context.get("device_target"), context.get("device_id"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if use_parallel:
        init_distributed(device)
    logger.info("init_context: rank %d of %d on %s", get_rank(), get_world_size(), device)
    return get_rank(), get_world_size()
