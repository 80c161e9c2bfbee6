"""`TrainingArguments`: the fields of MindFormers' `mindformers/trainer/training_args.py` that act on PyTorch.

`Trainer(args=TrainingArguments(...))` turns them into a run config with
`convert_args_to_mindformers_config`, which (as in MindFormers) writes each field into its YAML place
only where the config does not already set it: `num_train_epochs` -> `runner_config.epochs`,
`per_device_train_batch_size` -> `runner_config.batch_size`, `optim` -> `optimizer.type`,
`learning_rate` / `lr_end` / `warmup_*` / `total_steps` -> `lr_schedule.*`, `logging_steps` ->
`MFLossMonitor.per_print_times`, `save_steps` / `save_prefix` / `save_total_limit` -> `CheckpointMonitor`,
`data_parallel` / `model_parallel` / `pipeline_stage` / `micro_batch_num` -> `parallel_config`, ...
MindFormers' Ascend-only fields (graph mode, sink mode, loss-scale cells, profiling, hub upload) are
left out; passing one raises TypeError as for any dataclass.
"""

from __future__ import annotations

import inspect
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from torchformers.errors import ConfigError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["TrainingArguments"]


@dataclass
class TrainingArguments:
    """MindFormers' `TrainingArguments` (the fields listed here, MindFormers' defaults)."""

    output_dir: str = "./output"
    seed: int = 42
    resume_from_checkpoint: str | None = None
    resume_training: bool | str | None = None
    do_train: bool = False
    do_eval: bool = False
    num_train_epochs: float = 3.0
    gradient_accumulation_steps: int = 1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    device_id: int = 0
    device_target: str | None = None
    use_parallel: bool = False
    data_parallel: int = 1
    model_parallel: int = 1
    pipeline_stage: int = 1
    micro_batch_num: int = 1
    use_seq_parallel: bool = False
    vocab_emb_dp: bool = True
    recompute: bool = False
    select_recompute: bool = False
    optim: str = "fp32_adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    learning_rate: float = 5e-5
    lr_end: float = 1e-6
    warmup_lr_init: float = 0.0
    warmup_ratio: float | None = None
    warmup_steps: int = 0
    total_steps: int = -1
    train_dataset: str | None = None
    eval_dataset: str | None = None
    shuffle: bool = True
    dataloader_drop_last: bool = True
    use_clip_grad: bool = True
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    save_prefix: str = "CKP"
    save_directory: str | None = None
    save_steps: int = 500
    save_total_limit: int = 5

    def __post_init__(self) -> None:
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainingArguments({name}={value!r}): expected a positive integer")
        if not MindFormerRegister.is_exist(MindFormerModuleType.OPTIMIZER, self.optim):
            raise ConfigError(
                f"TrainingArguments(optim={self.optim!r}): expected a registered optimizer "
                f"({', '.join(sorted(MindFormerRegister.registry.get(MindFormerModuleType.OPTIMIZER, {})))})"
            )
        if not MindFormerRegister.is_exist(MindFormerModuleType.LR, self.lr_scheduler_type):
            raise ConfigError(
                f"TrainingArguments(lr_scheduler_type={self.lr_scheduler_type!r}): expected a registered LR schedule "
                f"({', '.join(sorted(MindFormerRegister.registry.get(MindFormerModuleType.LR, {})))})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    def get_parallel_config(self) -> dict[str, Any]:
        return {
            "data_parallel": self.data_parallel,
            "model_parallel": self.model_parallel,
            "pipeline_stage": self.pipeline_stage,
            "micro_batch_num": self.micro_batch_num,
            "use_seq_parallel": self.use_seq_parallel,
            "vocab_emb_dp": self.vocab_emb_dp,
        }

    def get_recompute_config(self) -> dict[str, Any]:
        return {"recompute": self.recompute, "select_recompute": self.select_recompute}

    def _optimizer_block(self) -> dict[str, Any]:
        optimizer_cls = MindFormerRegister.get_cls(MindFormerModuleType.OPTIMIZER, self.optim)
        params = inspect.signature(optimizer_cls.__init__).parameters
        block: dict[str, Any] = {"type": self.optim, "eps": self.adam_epsilon, "weight_decay": self.weight_decay}
        if "betas" in params:
            block["betas"] = [self.adam_beta1, self.adam_beta2]
        else:
            block.update(beta1=self.adam_beta1, beta2=self.adam_beta2)
        return block

    def convert_args_to_mindformers_config(self, task_config: MutableMapping | None = None) -> MutableMapping:
        """Write the fields into `task_config` (a dict or `MindFormerConfig`; a new dict when None) where it
        does not set them already; returns it."""
        config: MutableMapping = task_config if task_config is not None else {}

        def put(dotted: str, value: Any) -> None:
            node = config
            *parents, leaf = dotted.split(".")
            for key in parents:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
            if node.get(leaf) is None:
                node[leaf] = value

        put("output_dir", self.output_dir)
        put("seed", self.seed)
        put("use_parallel", self.use_parallel)
        put("do_eval", self.do_eval)
        if self.resume_from_checkpoint:
            put("load_checkpoint", self.resume_from_checkpoint)
        if self.resume_training is not None:
            put("resume_training", self.resume_training)
        put("context.device_id", self.device_id)
        if self.device_target is not None:
            put("context.device_target", self.device_target)
        put("runner_config.epochs", int(self.num_train_epochs))
        put("runner_config.batch_size", self.per_device_train_batch_size)
        put("runner_config.gradient_accumulation_steps", self.gradient_accumulation_steps)
        for key, value in self.get_parallel_config().items():
            put(f"parallel_config.{key}", value)
        for key, value in self.get_recompute_config().items():
            put(f"recompute_config.{key}", value)
        for key, value in self._optimizer_block().items():
            put(f"optimizer.{key}", value)
        put("lr_schedule.type", self.lr_scheduler_type)
        put("lr_schedule.learning_rate", self.learning_rate)
        put("lr_schedule.lr_end", self.lr_end)
        put("lr_schedule.warmup_lr_init", self.warmup_lr_init)
        put("lr_schedule.warmup_steps", self.warmup_steps)
        if self.warmup_ratio is not None:
            put("lr_schedule.warmup_ratio", self.warmup_ratio)
        put("lr_schedule.total_steps", self.total_steps)
        put("runner_wrapper.type", "MFTrainOneStepCell")
        put("runner_wrapper.use_clip_grad", self.use_clip_grad)
        put("runner_wrapper.max_grad_norm", self.max_grad_norm)
        for section, path in (("train_dataset", self.train_dataset), ("eval_dataset", self.eval_dataset)):
            if path:
                put(f"{section}.data_loader.dataset_dir", path)
        if self.train_dataset:
            put("train_dataset.data_loader.shuffle", self.shuffle)
            put("train_dataset.data_loader.drop_remainder", self.dataloader_drop_last)
        callbacks = list(config.get("callbacks") or [])
        _callback(callbacks, "MFLossMonitor", per_print_times=self.logging_steps)
        _callback(
            callbacks,
            "CheckpointMonitor",
            prefix=self.save_prefix,
            directory=self.save_directory,
            save_checkpoint_steps=self.save_steps,
            keep_checkpoint_max=self.save_total_limit,
        )
        config["callbacks"] = callbacks
        return config


def _callback(callbacks: list, type_name: str, **values: Any) -> None:
    """Fill `values` into the callback block of `type_name` (added when missing) where unset."""
    block = next((cb for cb in callbacks if isinstance(cb, MutableMapping) and cb.get("type") == type_name), None)
    if block is None:
        block = {"type": type_name}
        callbacks.append(block)
    for key, value in values.items():
        if block.get(key) is None and value is not None:
            block[key] = value
