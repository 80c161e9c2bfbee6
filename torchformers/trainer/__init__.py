"""Trainers: task trainers registered under TRAINER, dispatched to by `run_mindformer.py`."""

from torchformers.trainer.base_trainer import BaseTrainer, CausalLanguageModelingTrainer

__all__ = ["BaseTrainer", "CausalLanguageModelingTrainer"]
