"""`Trainer`: MindFormers' high-level API (`mindformers/trainer/trainer.py`, spec §9.1).

`Trainer(args=<yaml path | MindFormerConfig | dict>, model=..., train_dataset=..., eval_dataset=...,
optimizers=..., callbacks=...)` builds the run context (device, seed, log folder) and the task trainer
named by `trainer.type` (default `CausalLanguageModelingTrainer`), then `train()`, `finetune()`,
`evaluate()` and `predict()` delegate to it with the config and whatever objects were passed in.
A data set argument may be a path (it becomes `<section>.data_loader.dataset_dir`) or any iterable
of batches. `args` may also be a `TrainingArguments` (mapped onto the YAML sections with its
`convert_args_to_mindformers_config`).

`set_parallel_config(...)` / `set_recompute_config(...)` write `parallel_config` / `recompute_config`
before a run, `save_model(output_dir)` writes the model with `save_pretrained` (and the tokenizer),
`get_last_checkpoint()` is the newest complete training checkpoint of this rank (MindFormers semantics).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from torchformers.errors import ConfigError, TrainingError
from torchformers.models.modeling_utils import PretrainedModel
from torchformers.parallel.context import build_context
from torchformers.pet import PET_TYPES
from torchformers.tools.register.build import build_trainer
from torchformers.tools.register.config import MindFormerConfig
from torchformers.tools.register.template import apply_template
from torchformers.trainer.checkpointing import find_resume_checkpoint
from torchformers.trainer.training_args import TrainingArguments
from torchformers.utils import get_rank

__all__ = ["Trainer"]


class Trainer:
    def __init__(
        self,
        args=None,
        task: str = "general",
        model: nn.Module | str | None = None,
        model_name: str | None = None,
        tokenizer=None,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        optimizers=None,
        compute_metrics=None,
        callbacks=None,
        eval_callbacks=None,
        pet_method: str = "",
        image_processor=None,
        audio_processor=None,
        save_config: bool = False,
        reset_model: bool = False,
    ) -> None:
        self.config = self._make_config(args)
        if isinstance(model, str):
            raise ConfigError(f"Trainer(model={model!r}): model names need a bundled YAML; pass args=<yaml path>")
        self.model, self.tokenizer = model, tokenizer
        self.train_dataset = self._dataset(train_dataset, "train_dataset")
        self.eval_dataset = self._dataset(eval_dataset, "eval_dataset")
        self.optimizer = optimizers[0] if isinstance(optimizers, (tuple, list)) else optimizers
        self._callbacks = list(callbacks or [])
        if pet_method and str(pet_method).lower() not in PET_TYPES:
            raise ConfigError(f"Trainer(pet_method={pet_method!r}): supported are {', '.join(PET_TYPES)}")
        if pet_method:
            pet = self.config.get_value("model.model_config.pet_config") or {}
            self.config.set_value("model.model_config.pet_config", {**dict(pet), "pet_type": str(pet_method).lower()})
        if not isinstance(self.config.get("trainer"), Mapping):
            self.config.trainer = {"type": "CausalLanguageModelingTrainer", "model_name": model_name or "common"}
        build_context(self.config)
        self.trainer = build_trainer(self.config.trainer)
        if save_config:
            self.config.save(Path(self.config.get("output_dir") or "./output") / "config.yaml")

    @staticmethod
    def _make_config(args) -> MindFormerConfig:
        if isinstance(args, (str, Path)):
            if not Path(args).is_file():
                raise ConfigError(f"Trainer(args={str(args)!r}): no such YAML file")
            return MindFormerConfig(str(args))
        if isinstance(args, MindFormerConfig):
            return args
        if isinstance(args, TrainingArguments):
            cfg = args.convert_args_to_mindformers_config({"run_mode": "train"})
            return MindFormerConfig(apply_template(cfg))
        if args is None or isinstance(args, Mapping):
            cfg = copy.deepcopy(dict(args or {}))
            cfg.setdefault("run_mode", "train")
            return MindFormerConfig(apply_template(cfg))
        raise ConfigError(
            f"Trainer(args=...) takes a YAML path, a MindFormerConfig, a TrainingArguments or a dict, got {type(args)}"
        )

    def _dataset(self, dataset, section: str):
        if isinstance(dataset, (str, Path)):
            self.config.set_value(f"{section}.data_loader.dataset_dir", str(dataset))
            task = self.config.get(f"{section}_task")
            if isinstance(task, Mapping) and isinstance(task.get("dataset_config"), Mapping):
                self.config.set_value(f"{section}_task.dataset_config.data_loader.dataset_dir", str(dataset))
            return None
        return dataset

    # -- callbacks ---------------------------------------------------------------------------------
    @property
    def callback_list(self) -> list:
        return list(self._callbacks)

    def add_callback(self, callback) -> None:
        self._callbacks.append(callback() if isinstance(callback, type) else callback)

    def pop_callback(self, callback):
        for cb in self._callbacks:
            if cb is callback or (isinstance(callback, type) and isinstance(cb, callback)):
                self._callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback) -> None:
        self.pop_callback(callback)

    # -- parallel / recompute settings, saving ------------------------------------------------------
    def set_parallel_config(
        self,
        data_parallel: int = 1,
        model_parallel: int = 1,
        context_parallel: int = 1,
        expert_parallel: int = 1,
        pipeline_stage: int = 1,
        micro_batch_interleave_num: int = 1,
        micro_batch_num: int = 1,
        use_seq_parallel: bool = False,
        optimizer_shard: bool = False,
        gradient_aggregation_group: int = 4,
        vocab_emb_dp: bool = True,
    ) -> None:
        """Set `parallel_config` (and `micro_batch_interleave_num`) for the next run, as MindFormers does."""
        values = dict(
            data_parallel=data_parallel,
            model_parallel=model_parallel,
            context_parallel=context_parallel,
            expert_parallel=expert_parallel,
            pipeline_stage=pipeline_stage,
            micro_batch_num=micro_batch_num,
            use_seq_parallel=use_seq_parallel,
            optimizer_shard=optimizer_shard,
            gradient_aggregation_group=gradient_aggregation_group,
            vocab_emb_dp=vocab_emb_dp,
        )
        for key in ("data_parallel", "model_parallel", "context_parallel", "expert_parallel", "pipeline_stage",
                    "micro_batch_num", "micro_batch_interleave_num", "gradient_aggregation_group"):  # fmt: skip
            value = micro_batch_interleave_num if key == "micro_batch_interleave_num" else values[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Trainer.set_parallel_config({key}={value!r}): expected a positive integer")
        for key, value in values.items():
            self.config.set_value(f"parallel_config.{key}", value)
        self.config.micro_batch_interleave_num = micro_batch_interleave_num

    def set_recompute_config(
        self,
        recompute: bool = False,
        parallel_optimizer_comm_recompute: bool = False,
        select_recompute: bool = False,
        mp_comm_recompute: bool = True,
        recompute_slice_activation: bool = False,
    ) -> None:
        """Set `recompute_config` for the next run (`recompute: True` checkpoints every decoder layer)."""
        values = dict(
            recompute=recompute,
            parallel_optimizer_comm_recompute=parallel_optimizer_comm_recompute,
            select_recompute=select_recompute,
            mp_comm_recompute=mp_comm_recompute,
            recompute_slice_activation=recompute_slice_activation,
        )
        for key, value in values.items():
            self.config.set_value(f"recompute_config.{key}", value)

    def save_model(self, output_dir: str | None = None, internal_call: bool = False) -> None:
        """Write the model (`save_pretrained`: config and safetensors weights) and the tokenizer to `output_dir`
        (default: the config's `output_dir`)."""
        output_dir = str(output_dir or self.config.get("output_dir") or "./output")
        if self.model is None:
            raise TrainingError(
                "Trainer.save_model: there is no model yet; pass model=... or call train()/finetune() first"
            )
        if not isinstance(self.model, PretrainedModel):
            raise TrainingError(
                f"Trainer.save_model: the model is a {type(self.model).__name__}; expected a PretrainedModel "
                "(save_pretrained writes its config and weights)"
            )
        self.model.save_pretrained(output_dir)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(output_dir)

    def get_last_checkpoint(self) -> str | None:
        """The newest complete training checkpoint in `<output_dir>/checkpoint/rank_<r>/`, or None."""
        found = find_resume_checkpoint(self.config.get("output_dir") or "./output", True, get_rank())
        return str(found) if found is not None else None

    # -- run modes ---------------------------------------------------------------------------------
    def _prepare_train(self, run_mode, checkpoint, resume_from_checkpoint, resume_training, do_eval):
        self.config.run_mode = run_mode
        source = resume_from_checkpoint if resume_from_checkpoint is not None else checkpoint
        if isinstance(source, str) and source:
            self.config.load_checkpoint = source
        if resume_training is not None:
            self.config.resume_training = resume_training
        elif source is True:
            self.config.resume_training = True
        if resume_training and isinstance(source, str):
            self.config.resume_training = source
        if do_eval:
            self.config.do_eval = True

    def train(
        self,
        train_checkpoint=False,
        resume_from_checkpoint=None,
        resume_training: bool | str | None = None,
        ignore_data_skip: bool | None = None,
        data_skip_steps: int | None = None,
        auto_trans_ckpt: bool | None = None,
        src_strategy: str | None = None,
        transform_process_num: int | None = None,
        do_eval: bool = False,
    ):
        self._prepare_train("train", train_checkpoint, resume_from_checkpoint, resume_training, do_eval)
        return self._run_training()

    def finetune(
        self,
        finetune_checkpoint=False,
        resume_from_checkpoint=None,
        resume_training: bool | str | None = None,
        ignore_data_skip: bool | None = None,
        data_skip_steps: int | None = None,
        auto_trans_ckpt: bool | None = None,
        src_strategy: str | None = None,
        transform_process_num: int | None = None,
        do_eval: bool = False,
    ):
        self._prepare_train("finetune", finetune_checkpoint, resume_from_checkpoint, resume_training, do_eval)
        return self._run_training()

    def _run_training(self):
        result = self.trainer.train(
            config=self.config,
            network=self.model,
            dataset=self.train_dataset,
            optimizer=self.optimizer,
            callbacks=self._callbacks,
            eval_dataset=self.eval_dataset,
        )
        self.model = getattr(self.trainer, "network", self.model)
        return result

    def evaluate(self, eval_dataset=None, eval_checkpoint=False, auto_trans_ckpt=None, src_strategy=None,
                 transform_process_num=None, **kwargs) -> dict:  # fmt: skip
        self.config.run_mode = "eval"
        dataset = self._dataset(eval_dataset, "eval_dataset") if eval_dataset is not None else self.eval_dataset
        checkpoint = eval_checkpoint if isinstance(eval_checkpoint, str) and eval_checkpoint else None
        network = None if checkpoint else self.model
        return self.trainer.evaluate(config=self.config, eval_checkpoint=checkpoint, network=network, dataset=dataset)

    def predict(self, predict_checkpoint=None, auto_trans_ckpt=None, src_strategy=None, transform_process_num=None,
                input_data=None, batch_size=None, **kwargs):  # fmt: skip
        self.config.run_mode = "predict"
        if isinstance(predict_checkpoint, str) and predict_checkpoint:
            self.config.load_checkpoint = predict_checkpoint
        network = None if predict_checkpoint else self.model
        return self.trainer.predict(config=self.config, input_data=input_data, batch_size=batch_size,
                                    network=network, tokenizer=self.tokenizer, **kwargs)  # fmt: skip
