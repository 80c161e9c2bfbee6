"""Learning-rate schedules registered under LR, with MindFormers' names and arguments.

Follows MindFormers `mindformers/core/lr/lr_schedule.py`: a schedule is a function of the global
optimizer step (0 for the first step) returning the learning rate. Warm-up goes linearly from
`warmup_lr_init` to `learning_rate` over `warmup_steps`; `warmup_ratio` (when given) sets
`warmup_steps = int(total_steps * warmup_ratio)`. `total_steps: -1` (or None) means "all optimizer
steps of the run"; the trainer fills it in (`runner_config.epochs` x steps per epoch) through
`resolve_total_steps` before the first step. Lower-case aliases (`cosine`, `linear`, ...) are those
of MindFormers' `core/lr/build_lr.py`.
"""

from __future__ import annotations

import math

from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.config import ConfigError

__all__ = [
    "ConstantWarmUpLR",
    "CosineWithRestartsAndWarmUpLR",
    "CosineWithWarmUpLR",
    "LearningRateSchedule",
    "LinearWithWarmUpLR",
    "PolynomialWithWarmUpLR",
]


class LearningRateSchedule:
    """Base: warm-up handling and the `total_steps` / `warmup_ratio` bookkeeping."""

    needs_total_steps = True

    def __init__(
        self,
        learning_rate: float,
        warmup_steps: int | None = None,
        warmup_lr_init: float = 0.0,
        warmup_ratio: float | None = None,
        total_steps: int | None = None,
        lr_end: float = 0.0,
        decay_steps: int | None = None,
        warmup_epochs: int | None = None,
        **kwargs,
    ) -> None:
        name = type(self).__name__
        if isinstance(learning_rate, str) or float(learning_rate) < 0:
            raise ConfigError(f"lr_schedule.learning_rate of {name} must be a number >= 0, got {learning_rate!r}")
        if warmup_ratio is not None and not 0 <= float(warmup_ratio) <= 1:
            raise ConfigError(f"lr_schedule.warmup_ratio of {name} must lie in [0, 1], got {warmup_ratio!r}")
        unknown = {k: v for k, v in kwargs.items() if k != "type"}
        if unknown:
            raise ConfigError(f"lr_schedule {name}: unknown arguments {sorted(unknown)}")
        self.learning_rate = float(learning_rate)
        self.warmup_lr_init = float(warmup_lr_init)
        self.lr_end = float(lr_end)
        self._warmup_steps = warmup_steps
        self.warmup_ratio = None if warmup_ratio is None else float(warmup_ratio)
        self.warmup_epochs = warmup_epochs
        self._decay_steps = decay_steps
        self.total_steps = None if total_steps in (None, -1) else int(total_steps)
        self._finish()

    def resolve_total_steps(self, total_steps: int, steps_per_epoch: int | None = None) -> None:
        """Fill in `total_steps: -1` (and `warmup_epochs`) from the run's length."""
        if self.total_steps is None:
            self.total_steps = int(total_steps)
        if self.warmup_epochs is not None and steps_per_epoch:
            self._warmup_steps = int(self.warmup_epochs) * steps_per_epoch
        self._finish()

    def _finish(self) -> None:
        if self.warmup_ratio is not None and self.total_steps is not None:
            self.warmup_steps = int(self.total_steps * self.warmup_ratio)
        else:
            self.warmup_steps = int(self._warmup_steps or 0)
        if self.total_steps is not None:
            self.decay_steps = max(1, int(self._decay_steps or (self.total_steps - self.warmup_steps)))
        else:
            self.decay_steps = None

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.warmup_lr_init + (self.learning_rate - self.warmup_lr_init) * step / self.warmup_steps
        if self.needs_total_steps and self.decay_steps is None:
            raise ConfigError(
                f"lr_schedule {type(self).__name__} needs total_steps (set it, or -1 to derive it from the data)"
            )
        return self.decay(step - self.warmup_steps)

    def decay(self, step: int) -> float:  # step counted from the end of warm-up
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "type": type(self).__name__,
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@MindFormerRegister.register(MindFormerModuleType.LR)
@MindFormerRegister.register(MindFormerModuleType.LR, alias="constant_with_warmup")
class ConstantWarmUpLR(LearningRateSchedule):
    needs_total_steps = False

    def decay(self, step: int) -> float:
        return self.learning_rate


@MindFormerRegister.register(MindFormerModuleType.LR)
@MindFormerRegister.register(MindFormerModuleType.LR, alias="linear")
class LinearWithWarmUpLR(LearningRateSchedule):
    def decay(self, step: int) -> float:
        return self.learning_rate * max(0.0, 1.0 - step / self.decay_steps)


@MindFormerRegister.register(MindFormerModuleType.LR)
@MindFormerRegister.register(MindFormerModuleType.LR, alias="cosine")
class CosineWithWarmUpLR(LearningRateSchedule):
    def __init__(self, learning_rate: float, num_cycles: float = 0.5, **kwargs) -> None:
        self.num_cycles = float(num_cycles)
        super().__init__(learning_rate, **kwargs)

    def decay(self, step: int) -> float:
        progress = min(1.0, step / self.decay_steps)
        percent = max(0.0, 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * progress)))
        return self.lr_end + (self.learning_rate - self.lr_end) * percent


@MindFormerRegister.register(MindFormerModuleType.LR)
@MindFormerRegister.register(MindFormerModuleType.LR, alias="cosine_with_restarts")
class CosineWithRestartsAndWarmUpLR(LearningRateSchedule):
    def __init__(self, learning_rate: float, num_cycles: float = 1.0, **kwargs) -> None:
        self.num_cycles = float(num_cycles)
        super().__init__(learning_rate, **kwargs)

    def decay(self, step: int) -> float:
        progress = step / self.decay_steps
        if progress >= 1.0:
            return self.lr_end
        percent = max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * progress) % 1.0))))
        return self.lr_end + (self.learning_rate - self.lr_end) * percent


@MindFormerRegister.register(MindFormerModuleType.LR)
@MindFormerRegister.register(MindFormerModuleType.LR, alias="polynomial")
class PolynomialWithWarmUpLR(LearningRateSchedule):
    def __init__(self, learning_rate: float, power: float = 1.0, lr_end: float = 1e-7, **kwargs) -> None:
        self.power = float(power)
        super().__init__(learning_rate, lr_end=lr_end, **kwargs)

    def decay(self, step: int) -> float:
        if step >= self.decay_steps:
            return self.lr_end
        remaining = 1.0 - step / self.decay_steps
        return (self.learning_rate - self.lr_end) * remaining**self.power + self.lr_end
