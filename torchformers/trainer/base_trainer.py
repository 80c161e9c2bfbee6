"""Task trainers: what `run_mindformer.py` dispatches to through the TRAINER registry.

A task trainer is built from the YAML `trainer:` block (`{type: CausalLanguageModelingTrainer,
model_name: ...}`) and runs a run mode with the whole config:
`train(config=...)`, `evaluate(config=..., eval_checkpoint=...)`, `predict(config=..., input_data=...,
batch_size=...)` (MindFormers `mindformers/trainer/base_trainer.py` and
`causal_language_modeling/causal_language_modeling.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchformers.tools.logger import logger
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import build_model, build_processor, build_tokenizer
from torchformers.tools.register.config import ConfigError

__all__ = ["BaseTrainer", "CausalLanguageModelingTrainer", "read_prompts", "write_results"]


def read_prompts(input_data) -> list[str]:
    """`input_data` as prompts: a list stays a batch; a path to a file gives one prompt per line."""
    if input_data is None:
        raise ConfigError('predict needs input: pass --predict_data "text" (or a file of prompts) or set input_data')
    if isinstance(input_data, str):
        if os.path.isfile(input_data):
            with open(input_data, encoding="utf-8") as f:
                prompts = [line.rstrip("\n").replace("\\n", "\n") for line in f]
            prompts = [p for p in prompts if p]
            if not prompts:
                raise ConfigError(f"--predict_data file {input_data} has no prompts (one per line expected)")
            return prompts
        return [input_data]
    if isinstance(input_data, Sequence) and all(isinstance(p, str) for p in input_data):
        return list(input_data)
    raise ConfigError(f"input_data must be a string, a list of strings or a file path, got {input_data!r}")


def write_results(results: list, save_file: str | None) -> Path:
    """Write predict results as MindFormers does (`str(list)`), atomically; returns the path."""
    path = Path(save_file or "text_generation_result.txt")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(results))
    os.replace(tmp, path)
    return path


class BaseTrainer:
    """Shared building blocks of task trainers."""

    def __init__(self, model_name: str | None = None, **kwargs) -> None:
        self.model_name = model_name
        self.kwargs = kwargs

    # -- building ----------------------------------------------------------------------------------
    def build_tokenizer(self, config):
        processor_cfg = config.get("processor")
        if isinstance(processor_cfg, Mapping) and isinstance(processor_cfg.get("tokenizer"), Mapping):
            if processor_cfg.get("type"):
                processor = build_processor(processor_cfg)
                return getattr(processor, "tokenizer", processor)
            return build_tokenizer(processor_cfg["tokenizer"])
        raise ConfigError(f"{config.source_file}: predict needs a 'processor.tokenizer' block to turn text into ids")

    def build_network(self, config, checkpoint: str | None = None):
        """Build the model from `model:` and load `checkpoint` (or `load_checkpoint`) into it."""
        if not isinstance(config.get("model"), Mapping):
            raise ConfigError(f"{config.source_file}: the config has no 'model' section")
        model = build_model(config.model)
        checkpoint = (
            checkpoint
            or config.get("load_checkpoint")
            or config.get_value("model.model_config.checkpoint_name_or_path")
        )
        if checkpoint:
            model.load_checkpoint(checkpoint)
            logger.info("loaded checkpoint %s", checkpoint)
        else:
            logger.warning("no checkpoint given (load_checkpoint): the model has random weights")
        device = getattr(config, "device", None)
        if device is not None:
            model.to(device)
        return model

    # -- run modes ---------------------------------------------------------------------------------
    def train(self, config, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def evaluate(self, config, eval_checkpoint=None, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not evaluate")

    def predict(self, config, input_data=None, batch_size=None, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not predict")


@MindFormerRegister.register(MindFormerModuleType.TRAINER)
class CausalLanguageModelingTrainer(BaseTrainer):
    """Causal language modelling: pretrain / finetune / evaluate (loss, perplexity) / text generation."""

    def predict(self, config, input_data=None, batch_size=None, network=None, tokenizer=None, **kwargs):
        from torchformers.pipeline import pipeline

        prompts = read_prompts(input_data if input_data is not None else config.get("input_data"))
        tokenizer = tokenizer or self.build_tokenizer(config)
        model = network or self.build_network(config)
        model.eval()
        text_generator = pipeline("text_generation", model=model, tokenizer=tokenizer)
        batch_size = batch_size or config.get("predict_batch_size") or len(prompts)
        results = []
        for start in range(0, len(prompts), batch_size):
            results.extend(text_generator(prompts[start : start + batch_size]))
        path = write_results(results, config.get("save_file"))
        for item in results:
            logger.info("output result is: %s", item)
        logger.info("output result is saved at: %s", path)
        return results
