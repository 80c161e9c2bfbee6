"""The run context: device, seed, output folder and (under torchrun) the process group.

MindFormers' `build_context` (`mindformers/core/context/build_context.py`) sets MindSpore's context
from the YAML `context` block; here the same block picks the torch device: `device_target` CPU or GPU
(None: GPU when one is available), `device_id` the GPU index (under torchrun, LOCAL_RANK wins).
Ascend (or NPU) has no PyTorch device here: it runs on what is there (GPU when available, else CPU) and
says so in the log. `torchformers.tools.context` re-exports these at MindFormers'
module path; the trainer imports them from here, below it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from torchformers.errors import ConfigError
from torchformers.parallel import init_distributed
from torchformers.tools.logger import logger, set_log_dir

__all__ = ["build_context", "resolve_device", "set_seed"]


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
