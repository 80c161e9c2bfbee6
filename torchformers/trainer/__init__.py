"""Trainers: task trainers registered under TRAINER, dispatched to by `run_mindformer.py`, and `Trainer`.

Importing this package registers the optimizers (OPTIMIZER), LR schedules (LR), the train-step
wrapper and loss-scale cells (WRAPPER) and the callbacks (CALLBACK) under MindFormers' names.
"""

from torchformers.trainer import callbacks, lr_schedule, optimizer, wrapper  # noqa: F401  (registers)
from torchformers.trainer.base_trainer import (
    BaseTrainer,
    CausalLanguageModelingTrainer,
    apply_activation_checkpointing,
    evaluate_loss,
)
from torchformers.trainer.callbacks import CheckpointMonitor, EvalCallBack, MFLossMonitor, ObsMonitor
from torchformers.trainer.train_loop import TrainingInterrupted
from torchformers.trainer.trainer import Trainer
from torchformers.trainer.training_args import TrainingArguments
from torchformers.trainer.wrapper import NonFiniteLossError

__all__ = [
    "BaseTrainer",
    "CausalLanguageModelingTrainer",
    "CheckpointMonitor",
    "EvalCallBack",
    "MFLossMonitor",
    "NonFiniteLossError",
    "ObsMonitor",
    "Trainer",
    "TrainingArguments",
    "TrainingInterrupted",
    "apply_activation_checkpointing",
    "evaluate_loss",
]
