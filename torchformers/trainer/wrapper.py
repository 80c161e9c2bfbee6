"""The training step: `runner_wrapper` (MindFormers `MFTrainOneStepCell`) on PyTorch.

`MFTrainOneStepCell(network, optimizer, use_clip_grad=True, max_grad_norm=1.0, scale_sense=1.0, ...)`
runs one optimizer step over `gradient_accumulation_steps` micro-batches: forward (the model computes
in its own `compute_dtype`, as MindFormers' cells do: no autocast here), backward, gradient clipping
(global norm, as MindFormers' `ClipGradNorm`), optimizer step. `scale_sense` is MindFormers' loss
scale: a number (fixed scale) or a `DynamicLossScaleUpdateCell` / `FixedLossScaleUpdateCell` block.
Loss scaling exists to keep fp16 gradients from underflowing, so it is applied (through
`torch.amp.GradScaler`) only when the compute dtype is float16; with bfloat16 or float32 it would only
cost time and is skipped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from torchformers.errors import ConfigError, TrainingError
from torchformers.tools.logger import logger
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import build_wrapper

__all__ = [
    "DynamicLossScaleUpdateCell",
    "FixedLossScaleUpdateCell",
    "MFTrainOneStepCell",
    "NonFiniteLossError",
    "StepOutput",
    "batch_to_inputs",
]


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or Inf; the run stops before the optimizer applies it."""


@MindFormerRegister.register(MindFormerModuleType.WRAPPER)
class DynamicLossScaleUpdateCell:
    """Loss scale that halves on overflow and doubles after `scale_window` clean steps."""

    def __init__(self, loss_scale_value: float = 65536, scale_factor: float = 2, scale_window: int = 1000) -> None:
        self.loss_scale_value, self.scale_factor, self.scale_window = (
            float(loss_scale_value),
            scale_factor,
            scale_window,
        )

    def make_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(
            device.type,
            init_scale=self.loss_scale_value,
            growth_factor=float(self.scale_factor),
            backoff_factor=1.0 / float(self.scale_factor),
            growth_interval=int(self.scale_window),
        )


@MindFormerRegister.register(MindFormerModuleType.WRAPPER)
class FixedLossScaleUpdateCell:
    """A constant loss scale; steps whose gradients overflow are skipped."""

    fixed = True

    def __init__(self, loss_scale_value: float = 1.0) -> None:
        self.loss_scale_value = float(loss_scale_value)

    def make_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, init_scale=self.loss_scale_value, growth_interval=2**31 - 1)


def _scale_cell(scale_sense):
    if scale_sense is None:
        return None
    if isinstance(scale_sense, (int, float)) and not isinstance(scale_sense, bool):
        return FixedLossScaleUpdateCell(scale_sense)
    if isinstance(scale_sense, Mapping):
        return build_wrapper(scale_sense)
    if hasattr(scale_sense, "make_scaler"):
        return scale_sense
    raise ConfigError(
        f"runner_wrapper.scale_sense must be a number or a loss-scale block "
        f"({{type: DynamicLossScaleUpdateCell, ...}}), got {scale_sense!r}"
    )


def batch_to_inputs(batch, device: torch.device) -> dict:
    """A batch from a data set as model keyword inputs: `input_ids`, and `labels` / `loss_mask` when present."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ConfigError(f"a training batch needs an 'input_ids' column, got columns {sorted(batch)}")
        inputs = {k: batch[k] for k in ("input_ids", "labels", "loss_mask") if batch.get(k) is not None}
    elif isinstance(batch, torch.Tensor):
        inputs = {"input_ids": batch}
    elif isinstance(batch, Sequence) and batch:
        inputs = {"input_ids": batch[0]}
        if len(batch) > 1 and batch[1] is not None:
            inputs["labels"] = batch[1]
    else:
        raise ConfigError(f"a training batch must be a dict of columns, a tensor or a tuple, got {type(batch)}")
    out = {}
    for key, value in inputs.items():
        tensor = torch.as_tensor(value)
        out[key] = tensor.to(device, non_blocking=True)
    return out


class StepOutput:
    __slots__ = ("grad_norm", "loss", "loss_scale", "overflow", "tokens")

    def __init__(self, loss: float, grad_norm: float | None, loss_scale: float, overflow: bool, tokens: int) -> None:
        self.loss, self.grad_norm, self.loss_scale, self.overflow, self.tokens = (
            loss,
            grad_norm,
            loss_scale,
            overflow,
            tokens,
        )


@MindFormerRegister.register(MindFormerModuleType.WRAPPER)
@MindFormerRegister.register(MindFormerModuleType.WRAPPER, alias="MFPipelineWithLossScaleCell")
class MFTrainOneStepCell:
    """One optimizer step: accumulate, (un)scale, clip, step. `__call__(micro_batches) -> StepOutput`."""

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        use_clip_grad: bool = True,
        max_grad_norm: float = 1.0,
        scale_sense=1.0,
        compute_dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        local_norm: bool = False,
        calculate_per_token_loss: bool = False,
        **ignored,
    ) -> None:
        ignored.pop("type", None)
        if ignored:
            logger.info("runner_wrapper: options %s have no effect on PyTorch", sorted(ignored))
        self.network, self.optimizer = network, optimizer
        self.use_clip_grad, self.max_grad_norm = bool(use_clip_grad), float(max_grad_norm)
        self.device = device or next(network.parameters()).device
        self.params = [p for p in network.parameters() if p.requires_grad]
        param_dtype = self.params[0].dtype if self.params else torch.float32
        # the dtype a mixed-precision model computes in (weights stored in another): decides fp16 loss scaling
        self.mixed_dtype = (
            compute_dtype if compute_dtype in (torch.float16, torch.bfloat16) and compute_dtype != param_dtype else None
        )
        cell = _scale_cell(scale_sense)
        self.scaler = None
        self.fixed_scale = None
        if self.mixed_dtype == torch.float16 and cell is not None:
            self.scaler = cell.make_scaler(self.device)
            if getattr(cell, "fixed", False):
                self.fixed_scale = cell.loss_scale_value
        elif cell is not None and not (isinstance(scale_sense, (int, float)) and float(scale_sense) == 1.0):
            logger.info("runner_wrapper.scale_sense: loss scaling is only used with float16 compute; skipped")

    def __call__(self, micro_batches: list) -> StepOutput:
        model, n = self.network, len(micro_batches)
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        tokens = 0
        for i, batch in enumerate(micro_batches):
            inputs = batch_to_inputs(batch, self.device)
            tokens += inputs["input_ids"][:, :-1].numel()
            sync = contextlib.nullcontext()
            if i < n - 1 and hasattr(model, "no_sync"):
                sync = model.no_sync()
            with sync:
                loss = model(**inputs)  # the model computes in its compute_dtype itself (no autocast here)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise TypeError(
                        f"{type(model).__name__} in train mode must return the scalar loss, got {type(loss).__name__}"
                    )
                scaled = loss.float() / n
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach().float()
        loss_value = total.item() / n
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss is {loss_value}")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.max_grad_norm if self.use_clip_grad else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True))
        overflow = False
        scale = 1.0
        if self.scaler is not None:
            scale = float(self.scaler.get_scale())
            overflow = not math.isfinite(grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update(new_scale=self.fixed_scale)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss_value, grad_norm, scale, overflow, tokens)
