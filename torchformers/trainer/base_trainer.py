"""Task trainers: what `run_mindformer.py` dispatches to through the TRAINER registry.

A task trainer is built from the YAML `trainer:` block (`{type: CausalLanguageModelingTrainer,
model_name: ...}`) and runs a run mode with the whole config:
`train(config=...)`, `evaluate(config=..., eval_checkpoint=...)`, `predict(config=..., input_data=...,
batch_size=...)` (MindFormers `mindformers/trainer/base_trainer.py` and
`causal_language_modeling/causal_language_modeling.py`).

`training_process` follows MindFormers' order, one named step each: the resume point (a train state),
data set, network (`_training_network`: sharded on the meta device from weights, from `load_checkpoint`,
or bare for a resume; LoRA, prefix tuning or P-Tuning v2 from `model_config.pet_config`), parallelism and
activation checkpointing (`_parallelise`), optimizer with weight-decay groups and the LR schedule
(`total_steps: -1` from the data), `runner_wrapper`, callbacks, the loop (`train_loop.py`), then the pet
adapters. Weights load through the one loader, `torchformers.checkpoint.loader`. `runner_config.batch_size`
is the per-rank micro-batch; `gradient_accumulation_steps` micro-batches make one optimizer step.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from torchformers.assets import cache_dir
from torchformers.checkpoint.loader import load_state_into, load_weights, resolve_weights_path
from torchformers.errors import ConfigError
from torchformers.generation import prepare_for_cpu_inference
from torchformers.generation.gguf_quantized import load_gguf_quantized
from torchformers.generation.quantization import quantization_of_file, quantization_settings, quantize_model
from torchformers.parallel import parallel_dims_from_config, parallelize_model
from torchformers.parallel.activation_checkpoint import apply_activation_checkpointing
from torchformers.parallel.checkpoint import full_model_state, is_distributed_model
from torchformers.parallel.parallelize import ParallelPlan, build_parallel_model
from torchformers.parallel.strategy import write_strategy
from torchformers.pet import PET_TYPES, PREFIX_PET_TYPES, get_pet_model, is_pet_config, pet_keys_in, save_adapters
from torchformers.pet.slora import SLoraConfig, get_slora_model, is_slora_config
from torchformers.pipeline import pipeline
from torchformers.tools.logger import logger
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import (
    build_callback,
    build_dataset,
    build_lr,
    build_model,
    build_optim,
    build_processor,
    build_tokenizer,
    build_wrapper,
)
from torchformers.trainer.callbacks import Callback, EvalCallBack, MetricsWriter, TensorBoardWriter
from torchformers.trainer.checkpointing import (
    find_resume_checkpoint,
    is_train_state_file,
    read_weights,
    resume_checkpoint_from,
    weights_of_train_state,
)
from torchformers.trainer.optimizer import get_optimizer_grouped_parameters
from torchformers.trainer.pipeline_step import parallel_train_step
from torchformers.trainer.train_loop import TrainLoop
from torchformers.trainer.wrapper import batch_to_inputs
from torchformers.utils import get_rank, to_dtype

__all__ = [
    "BaseTrainer",
    "CausalLanguageModelingTrainer",
    "apply_activation_checkpointing",
    "evaluate_loss",
    "read_prompts",
    "write_results",
]


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


def _adapter_ids_of(config, adapter_id, n_prompts: int) -> list | None:
    """S-LoRA: the adapter of each prompt from `--adapter_id` (`config.adapter_id`) or `predict(adapter_id=...)`.

    One name applies to every prompt (MindFormers); as many names as prompts pair them up, prompt by prompt.
    Without S-LoRA there is nothing to choose (MindFormers ignores the flag then too); None keeps the base model
    (with MindFormers' warning)."""
    if not is_slora_config(config.get_value("model.model_config.pet_config")):
        return None
    if adapter_id is None:
        adapter_id = config.get("adapter_id")
    if adapter_id is None:
        return None
    names = [adapter_id] if isinstance(adapter_id, str) else list(adapter_id)
    if len(names) == 1:
        return names * n_prompts
    if len(names) != n_prompts:
        raise ConfigError(
            f"--adapter_id has {len(names)} names for {n_prompts} prompts; give one name (every prompt) "
            "or one per prompt"
        )
    return names


def write_results(results: list, save_file: str | None) -> Path:
    """Write predict results as MindFormers does (`str(list)`), atomically; returns the path."""
    path = Path(save_file or "text_generation_result.txt")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(results))
    os.replace(tmp, path)
    return path


@torch.no_grad()
def evaluate_loss(model: nn.Module, dataset, device: torch.device, max_batches: int | None = None) -> dict:
    """Token-weighted mean cross-entropy and perplexity over `dataset` (samples of seq_length + 1 tokens).

    The model's own `compute_loss(..., reduction="none")` decides which tokens are scored and in which
    precision it computes, as in training.
    """
    if not callable(getattr(model, "compute_loss", None)):
        raise ConfigError(
            f"evaluation needs a model with compute_loss(input_ids, labels, loss_mask=..., reduction='none'); "
            f"{type(model).__name__} has none"
        )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                break
            inputs = batch_to_inputs(batch, device)
            ids = inputs["input_ids"]
            per_token, mask = model.compute_loss(
                ids, inputs.get("labels"), loss_mask=inputs.get("loss_mask"), reduction="none"
            )
            total += float(per_token.float().sum())
            count += int(mask.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation data has no tokens to score (every label is masked or the set is empty)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


def _parallel_dims(config):
    """`ParallelDims` of a distributed run (`use_parallel` under torchrun), else None."""
    if not (config.get("use_parallel") and torch.distributed.is_initialized()):
        return None
    return parallel_dims_from_config(config)


def _weights_fill_meta_model(config, weights) -> bool:
    """Full weights (not a train state, no pet method to apply first) can fill a model built sharded on the meta
    device."""
    return not is_pet_config(config.get_value("model.model_config.pet_config")) and not is_train_state_file(weights)


def _compute_dtype(network: nn.Module) -> torch.dtype | None:
    return to_dtype(getattr(getattr(network, "config", None), "compute_dtype", None), "model_config.compute_dtype")


def _quantization(config, training: bool):
    """The `model.model_config.quantization_config` settings (None without one); refused for training."""
    settings = quantization_settings(
        config.get_value("model.model_config.quantization_config"), f"{config.source_file}: model.model_config"
    )
    if settings is not None and training:
        raise ConfigError(
            f"{config.source_file}: model.model_config.quantization_config (quant_method {settings.quant_method}) "
            f"quantizes for inference; run_mode {config.run_mode} trains float weights: remove quantization_config "
            "(or --quantization) to train"
        )
    return settings


def _gguf_network(config, checkpoint, quantization, pet: bool) -> nn.Module:
    """`quant_method: gguf`: the model built on the meta device and filled from the GGUF file's blocks
    (`load_gguf_quantized`), so no float copy of the quantized weights is ever made."""
    source = f"{config.source_file}: model.model_config.quantization_config"
    weights = resolve_weights_path(checkpoint) if checkpoint else None
    if weights is None or weights.suffix != ".gguf":
        raise ConfigError(
            f"{source}: quant_method gguf keeps a GGUF file's quantized blocks; load_checkpoint is {checkpoint!r}, "
            "expected a .gguf file"
        )
    if pet:
        raise ConfigError(f"{source}: quant_method gguf runs the file's model as is; remove pet_config")
    with torch.device("meta"):
        model = build_model(config.model)
    load_gguf_quantized(model, weights, quantization.torch_kernel_dtype())
    logger.info("loaded checkpoint %s kept quantized (%s)", checkpoint, quantization.describe())
    device = getattr(config, "device", None)
    if device is not None and torch.device(device).type != "cpu":
        model.to(device)
    return model


def _named_checkpoint(config) -> str | None:
    """`model.model_config.checkpoint_name_or_path`: a path, or a model name (MindFormers downloads those, e.g.
    'llama2_7b') that resolves to the folder `$TORCHFORMERS_HOME/<name>` when there is one."""
    name = config.get_value("model.model_config.checkpoint_name_or_path")
    if not name or Path(name).exists():
        return name or None
    local = cache_dir() / str(name)
    if local.is_dir():
        logger.info("checkpoint_name_or_path %r: using %s", name, local)
        return str(local)
    raise ConfigError(
        f"{config.source_file}: model.model_config.checkpoint_name_or_path is {name!r}, a model name and not a file "
        f"or folder, and there is no folder {local}; pass --load_checkpoint path/to/weights, or put the weights in "
        f"{local}, or set --model.model_config.checkpoint_name_or_path '' for random weights"
    )


def _source_strategy(config) -> str | None:
    """`src_strategy_path_or_dir` when `auto_trans_ckpt` is on: `load_checkpoint`'s `rank_N/` sliced
    checkpoints are merged with it (an empty one means the checkpoint is complete, as in MindFormers)."""
    strategy = config.get("src_strategy_path_or_dir") if config.get("auto_trans_ckpt") else None
    if strategy and not Path(strategy).exists():
        raise ConfigError(f"{config.source_file}: src_strategy_path_or_dir {strategy!r}: no such file or folder")
    return strategy or None


def _fill_vocab_file(config) -> None:
    """A `processor.tokenizer` block without `vocab_file` (MindFormers downloads it by `trainer.model_name`):
    take `$TORCHFORMERS_HOME/<model_name>/tokenizer.model` when it exists, else say what to pass."""
    tokenizer = config.get_value("processor.tokenizer")
    if not isinstance(tokenizer, Mapping) or tokenizer.get("vocab_file") or not tokenizer.get("type"):
        return
    cls = MindFormerRegister.get_cls(MindFormerModuleType.TOKENIZER, tokenizer["type"])
    param = inspect.signature(cls.__init__).parameters.get("vocab_file")
    if param is None or param.default is not inspect.Parameter.empty:
        return  # this tokenizer needs no vocabulary file
    model_name = config.get_value("trainer.model_name")
    local = cache_dir() / str(model_name) / "tokenizer.model" if model_name else None
    if local is not None and local.is_file():
        logger.info("processor.tokenizer.vocab_file not set: using %s (trainer.model_name %r)", local, model_name)
        config.set_value("processor.tokenizer.vocab_file", str(local))
        return
    where = f" or put it at {local}" if local is not None else ""
    raise ConfigError(
        f"{config.source_file}: processor.tokenizer ({tokenizer['type']}) has no vocab_file; "
        f"pass --processor.tokenizer.vocab_file path/to/tokenizer.model{where}"
    )


class BaseTrainer:
    """Shared building blocks of task trainers."""

    def __init__(self, model_name: str | None = None, **kwargs) -> None:
        self.model_name = model_name
        self.kwargs = kwargs

    # -- building ----------------------------------------------------------------------------------
    def build_tokenizer(self, config):
        processor_cfg = config.get("processor")
        _fill_vocab_file(config)
        if isinstance(processor_cfg, Mapping):  # apply_chat_template is read by predict, not by the processor
            processor_cfg = {k: v for k, v in processor_cfg.items() if k != "apply_chat_template"}
        if isinstance(processor_cfg, Mapping) and isinstance(processor_cfg.get("tokenizer"), Mapping):
            if processor_cfg.get("type"):
                processor = build_processor(processor_cfg)
                return getattr(processor, "tokenizer", processor)
            return build_tokenizer(processor_cfg["tokenizer"])
        raise ConfigError(f"{config.source_file}: predict needs a 'processor.tokenizer' block to turn text into ids")

    def build_network(self, config, checkpoint: str | None = None):
        """Build the model from `model:`, load weights or a train state from `checkpoint` (else
        `load_checkpoint`, else `checkpoint_name_or_path`) through the one loader, apply `pet_config`."""

        if not isinstance(config.get("model"), Mapping):
            raise ConfigError(f"{config.source_file}: the config has no 'model' section")
        pet_config = config.get_value("model.model_config.pet_config")
        pet = is_pet_config(pet_config)
        slora = is_slora_config(pet_config)
        if slora and config.run_mode != "predict":
            raise ConfigError(
                f"{config.source_file}: model.model_config.pet_config.pet_type 'slora' serves several LoRA adapters "
                f"in predict; run_mode is {config.run_mode!r} (finetune an adapter with pet_type 'lora')"
            )
        if slora:
            try:  # a bad adapter_path stops the run before the model is built
                pet_config = SLoraConfig.from_any(pet_config)
            except ConfigError as err:
                raise ConfigError(f"{config.source_file}: {err}") from None
        if pet_config and not pet and not slora:
            pet_type = pet_config.get("pet_type") if isinstance(pet_config, Mapping) else pet_config
            raise ConfigError(
                f"{config.source_file}: model.model_config.pet_config.pet_type is {pet_type!r}; "
                f"supported: {', '.join(repr(t) for t in (*PET_TYPES, 'slora'))} "
                "(remove pet_config to run the base model)"
            )
        quantization = _quantization(config, training=config.run_mode in ("train", "finetune"))
        checkpoint = checkpoint or config.get("load_checkpoint") or _named_checkpoint(config)
        if quantization is not None and quantization.weight == "gguf":
            return _gguf_network(config, checkpoint, quantization, pet or slora)
        model = build_model(config.model)
        if checkpoint:
            strategy = _source_strategy(config)
            weights_file = resolve_weights_path(checkpoint)  # MindFormers' layouts: rank_N/, a bare name, ...
            stored = quantization_of_file(weights_file)
            if stored is not None:  # a quantized checkpoint: quantize the layers first, then load its integers
                if quantization is not None and quantization != stored:
                    logger.warning("%s is quantized as %s; quantization_config is ignored", checkpoint,
                                   stored.describe())  # fmt: skip
                quantization = None
                quantize_model(model, stored)
            if strategy or is_train_state_file(checkpoint) or weights_file.suffix in (".safetensors", ".ckpt"):
                state = weights_of_train_state(read_weights(checkpoint, src_strategy=strategy))
                if pet and pet_keys_in(state, pet_config):
                    get_pet_model(model, pet_config)  # adapters are in the file: wrap first, then load all
                    pet = False
                load_state_into(model, state, source=str(checkpoint))
            else:
                load_weights(model, checkpoint)
            logger.info("loaded checkpoint %s", checkpoint)
        elif config.run_mode in ("finetune", "eval", "predict"):
            logger.warning("no checkpoint given (load_checkpoint): the model has random weights")
        if pet:
            get_pet_model(model, pet_config)
            if checkpoint and config.run_mode in ("eval", "predict"):
                logger.warning(
                    "%s: the checkpoint holds no %s weights; they start from their initialisation (load the "
                    "finetuned network checkpoint to use the trained ones)",
                    config.run_mode, model.pet_config.pet_type,
                )  # fmt: skip
        if slora:
            get_slora_model(model, pet_config)  # after the base weights, as MindFormers' load_slora_ckpt
        if quantization is not None:
            quantize_model(model, quantization)
        device = getattr(config, "device", None)
        if device is not None:
            model.to(device)
        return model

    def build_dataset(self, config, section: str = "train_dataset"):
        """Build `<section>_task` with `<section>` as its dataset_config (MindFormers' YAML anchor pattern)."""
        task = config.get(f"{section}_task")
        if not isinstance(task, Mapping) or not task.get("type"):
            raise ConfigError(
                f"{config.source_file}: '{section}_task' with a 'type' (e.g. CausalLanguageModelDataset) is needed"
            )
        task = copy.deepcopy(dict(task))
        dataset_config = copy.deepcopy(dict(config.get(section) or task.get("dataset_config") or {}))
        if section == "train_dataset":
            dataset_config["batch_size"] = int(config.get_value("runner_config.batch_size", 1))
            dataset_config.setdefault("seed", config.get("seed"))
            dims = _parallel_dims(config)
            if dims is not None:  # ranks of one model-/pipeline-parallel group read the same batches
                dataset_config["rank_id"] = dims.dp_coordinate(torch.distributed.get_rank())
                dataset_config["device_num"] = dims.dp
        task["dataset_config"] = dataset_config
        return build_dataset(task)

    def build_callbacks(self, config, extra: list | None = None) -> list:
        callbacks = []
        for entry in list(config.get("callbacks") or []) + list(extra or []):
            cb = entry if isinstance(entry, Callback) else build_callback(entry)
            callbacks.append(cb)
        return callbacks

    # -- run modes ---------------------------------------------------------------------------------
    def train(self, config, **kwargs):
        return self.training_process(config, **kwargs)

    def finetune(self, config, **kwargs):
        return self.training_process(config, **kwargs)

    def training_process(
        self,
        config,
        network: nn.Module | None = None,
        dataset=None,
        optimizer: torch.optim.Optimizer | None = None,
        callbacks: list | None = None,
        eval_dataset=None,
        **kwargs,
    ):
        """Train as the config says; returns the loop's final `RunContext`.

        The steps, in MindFormers' order: resume point, data, network, parallelism, optimizer and LR
        schedule, train-step wrapper, callbacks, the loop, then the pet adapters.
        """
        _quantization(config, training=True)  # refused before any data is read
        device = getattr(config, "device", None) or torch.device("cpu")
        output_dir = config.get("output_dir") or "./output"
        rank = get_rank()
        runner = config.get("runner_config") or {}
        gas = int(runner.get("gradient_accumulation_steps") or 1)
        if gas < 1:
            raise ConfigError(f"runner_config.gradient_accumulation_steps must be >= 1, got {gas}")
        resume_path = self._resume_point(config, output_dir, rank)
        dataset = dataset if dataset is not None else self.build_dataset(config, "train_dataset")
        recompute = bool(config.get_value("recompute_config.recompute"))
        dims, plan = _parallel_dims(config), None
        if network is None:
            network, plan = self._training_network(config, dims, device, resume_path, recompute)
        network.to(device)
        train_model, plan, world = self._parallelise(network, plan, dims, device, recompute)
        if plan is not None and (dims.tp > 1 or dims.pp > 1):  # a sliced layout: say how, as MindFormers does
            path = write_strategy(network, plan, output_dir, rank, torch.distributed.get_world_size())
            logger.info("parallel strategy of this rank written to %s", path)
        optimizer, lr_schedule = self._optimizer_and_schedule(config, network, optimizer)
        step_fn = self._train_step(config, network, train_model, optimizer, device, plan)
        cbs = self._training_callbacks(config, callbacks, network, eval_dataset, device, step_fn)
        loop = TrainLoop(
            train_model,
            optimizer,
            lr_schedule,
            dataset,
            step_fn,
            epochs=int(runner.get("epochs") or 1),
            gradient_accumulation_steps=gas,
            stop_step=int(runner.get("stop_step") or 0),
            callbacks=cbs,
            output_dir=output_dir,
            rank=rank,
            device=device,
            global_batch_size=int(runner.get("batch_size") or 1) * gas * world,
        )
        loop.model = network  # train states hold the bare model's names
        ctx = loop.run(resume_path)
        self.network, self.optimizer, self.loop = network, optimizer, loop
        self._save_adapters(network, output_dir, rank)
        logger.info("training finished at global step %d, loss %.4f", ctx.global_step, ctx.loss)
        return ctx

    # -- the steps of training_process -------------------------------------------------------------
    @staticmethod
    def _resume_point(config, output_dir: str, rank: int) -> Path | None:
        """The train state to resume from with `resume_training`: as MindFormers, from `load_checkpoint` (a
        file, or a folder of `rank_N/` folders: this rank's last checkpoint, or the file `resume_training`
        names); without `load_checkpoint`, the last one under `output_dir` (True) or the file named."""
        resume = config.get("resume_training")
        if not resume:
            return None
        load = config.get("load_checkpoint")
        if isinstance(load, str) and load:
            candidate = resume_checkpoint_from(load, resume, rank)
            if is_train_state_file(candidate):
                return candidate
            found = find_resume_checkpoint(output_dir, True, rank) if resume is True else None
            if found is None:
                logger.warning(
                    "resume_training: load_checkpoint %s holds no training state (epoch_num, step_num, global_step):"
                    " training starts at step 0 from its weights", candidate,
                )  # fmt: skip
            return found
        return find_resume_checkpoint(output_dir, resume, rank)

    def _training_network(
        self, config, dims, device: torch.device, resume_path: Path | None, recompute: bool
    ) -> tuple[nn.Module, ParallelPlan | None]:
        """The network, built one of three ways: sharded on the meta device and filled from full weights
        (no rank holds the whole model), from `load_checkpoint`, or bare when a train state will fill it."""
        weights = None if resume_path is not None else (config.get("load_checkpoint") or None)
        if dims is not None and weights and _weights_fill_meta_model(config, weights):
            network, plan = build_parallel_model(
                config.model, dims, device, training=True, recompute=recompute, checkpoint=weights,
                src_strategy=_source_strategy(config),
            )  # fmt: skip
            logger.info("built sharded on the meta device, weights from %s", weights)
            return network, plan
        # a resumed run reads its weights from the resume train state, not from load_checkpoint
        return (self.build_network(config, checkpoint=None) if resume_path is None else self._bare(config)), None

    @staticmethod
    def _parallelise(
        network: nn.Module, plan: ParallelPlan | None, dims, device: torch.device, recompute: bool
    ) -> tuple[nn.Module, ParallelPlan | None, int]:
        """`(model to train, plan, data-parallel size)`: TP -> recompute -> FSDP2 (and the pipeline stage)
        from `parallel_config`, or plain DDP for a process group without `use_parallel`."""
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        pet_type = getattr(getattr(network, "pet_config", None), "pet_type", None)
        if dims is not None and pet_type in PREFIX_PET_TYPES and (dims.tp > 1 or dims.pp > 1):
            raise ConfigError(
                f"pet_config.pet_type {pet_type} runs data parallel only; parallel_config has model_parallel "
                f"{dims.tp} and pipeline_stage {dims.pp} (expected 1 each: the prefix holds every head of every layer)"
            )
        if dims is not None:
            if plan is None:
                plan = parallelize_model(network, dims, device, recompute=recompute)
            world = dims.dp  # the global batch counts data-parallel ranks only
        elif recompute:
            logger.info("activation checkpointing on %d layers", apply_activation_checkpointing(network))
        train_model = network
        if plan is None and world > 1:
            train_model = nn.parallel.DistributedDataParallel(network)
        return train_model, plan, world

    @staticmethod
    def _optimizer_and_schedule(config, network: nn.Module, optimizer: torch.optim.Optimizer | None):
        """`(optimizer, lr_schedule)`: `optimizer:` over weight-decay groups, its rate from `lr_schedule:`."""
        lr_cfg = config.get("lr_schedule")
        lr_schedule = build_lr(lr_cfg) if isinstance(lr_cfg, Mapping) else None
        if optimizer is None:
            optim_cfg = dict(config.get("optimizer") or {"type": "AdamW"})
            groups = get_optimizer_grouped_parameters(network, float(optim_cfg.pop("weight_decay", 0.0) or 0.0))
            default = {"params": groups}
            if lr_schedule is not None:
                default["learning_rate"] = lr_schedule
            optimizer = build_optim(optim_cfg, default_args=default)
        if lr_schedule is None:
            lr_schedule = getattr(optimizer, "lr_schedule", None)
        return optimizer, lr_schedule

    @staticmethod
    def _train_step(config, network, train_model, optimizer, device: torch.device, plan: ParallelPlan | None):
        """The `runner_wrapper` step function (pipelined by the plan when there is one)."""
        wrapper_cfg = dict(config.get("runner_wrapper") or {"type": "MFTrainOneStepCell"})
        step_fn = build_wrapper(
            wrapper_cfg,
            default_args={"network": train_model, "optimizer": optimizer, "compute_dtype": _compute_dtype(network),
                          "device": device},
        )  # fmt: skip
        if plan is not None:
            step_fn = parallel_train_step(plan, step_fn)
        return step_fn

    def _training_callbacks(self, config, callbacks, network, eval_dataset, device: torch.device, step_fn) -> list:
        """The given callbacks, evaluation with `do_eval`, the YAML `callbacks:`, then the metric writers."""
        extra = list(callbacks or [])
        if config.get("do_eval"):
            eval_data = eval_dataset if eval_dataset is not None else self.build_dataset(config, "eval_dataset")
            extra.append(
                EvalCallBack(
                    functools.partial(evaluate_loss, network, eval_data, device),
                    step_interval=int(config.get("eval_step_interval") or 100),
                    epoch_interval=int(config.get("eval_epoch_interval") or -1),
                )
            )
        cbs = self.build_callbacks(config, extra)
        if TensorBoardWriter.available():
            cbs.append(TensorBoardWriter())
        cbs.append(MetricsWriter())
        return cbs

    @staticmethod
    def _save_adapters(network: nn.Module, output_dir: str, rank: int = 0) -> None:
        """A pet run (LoRA, prefix tuning, P-Tuning v2) also writes its adapters alone, to `<output_dir>/adapter/`,
        from rank 0; a sharded model's adapters are gathered first (every rank takes part)."""
        if getattr(network, "pet_config", None) is None:
            return
        state = None
        if is_distributed_model(network):
            state = {k: v for k, v in full_model_state(network).items() if "mindpet_delta_" in k}
        if rank == 0:
            path = save_adapters(network, Path(output_dir) / "adapter", state=state)
            logger.info("%s adapters saved to %s", network.pet_config.pet_type, path)

    def _bare(self, config):
        """The network without loading `load_checkpoint` (its weights come from the resume train state)."""

        model = build_model(config.model)
        pet_config = config.get_value("model.model_config.pet_config")
        if is_pet_config(pet_config):
            get_pet_model(model, pet_config)
        return model

    def evaluate(self, config, eval_checkpoint=None, network=None, dataset=None, **kwargs) -> dict:
        """Loss and perplexity of the model on `eval_dataset`."""
        device = getattr(config, "device", None) or torch.device("cpu")
        if network is None:
            checkpoint = eval_checkpoint if isinstance(eval_checkpoint, str) and eval_checkpoint else None
            network = self.build_network(config, checkpoint=checkpoint)
        network.to(device)
        dataset = dataset if dataset is not None else self.build_dataset(config, "eval_dataset")
        metrics = evaluate_loss(network, dataset, device)
        logger.info("eval: loss %.4f, perplexity %.4f over %d tokens", metrics["loss"], metrics["perplexity"],
                    metrics["tokens"])  # fmt: skip
        return metrics

    def predict(self, config, input_data=None, batch_size=None, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not predict")


@MindFormerRegister.register(MindFormerModuleType.TRAINER)
class CausalLanguageModelingTrainer(BaseTrainer):
    """Causal language modelling: pretrain / finetune / evaluate (loss, perplexity) / text generation."""

    def _build_predict_network(self, config):
        """The model for predict: sharded with `parallel_config` under torchrun with `use_parallel`
        (built on the meta device, so no rank holds the whole model), else a plain single-device model."""
        dist = torch.distributed
        if not (config.get("use_parallel") and dist.is_initialized() and dist.get_world_size() > 1):
            # fp32 on CPU: weights prepacked for oneDNN, about 1.8x faster decoding (docs/performance_tuning.md);
            # any other model is returned as it is
            return prepare_for_cpu_inference(self.build_network(config))
        if _quantization(config, training=False) is not None:
            raise ConfigError(
                f"{config.source_file}: model.model_config.quantization_config with use_parallel under torchrun: "
                "quantized layers are not sharded; run predict as one process (--use_parallel False)"
            )
        if is_slora_config(config.get_value("model.model_config.pet_config")):
            raise ConfigError(
                f"{config.source_file}: pet_config.pet_type 'slora' runs as one process; "
                "launch predict without torchrun (use_parallel with one process)"
            )
        dims = parallel_dims_from_config(config)
        checkpoint = config.get("load_checkpoint") or None
        model, _ = build_parallel_model(config.model, dims, config.device, checkpoint=checkpoint,
                                        src_strategy=_source_strategy(config))  # fmt: skip
        return model

    def predict(self, config, input_data=None, batch_size=None, network=None, tokenizer=None, **kwargs):
        prompts = read_prompts(input_data if input_data is not None else config.get("input_data"))
        tokenizer = tokenizer or self.build_tokenizer(config)
        model = network or self._build_predict_network(config)
        model.eval()
        text_generator = pipeline("text_generation", model=model, tokenizer=tokenizer)
        batch_size = batch_size or config.get("predict_batch_size") or len(prompts)
        if config.get_value("processor.apply_chat_template"):
            # each prompt becomes a user turn of the tokenizer's chat template
            prompts = [[{"role": "user", "content": p}] for p in prompts]
        adapter_ids = _adapter_ids_of(config, kwargs.get("adapter_id"), len(prompts))
        generate_kwargs = {}
        if str(config.get_value("model.model_config.use_past")).lower() == "false":  # said in the YAML
            logger.info(
                "%s: model_config.use_past is False: each new token recomputes the whole sequence, as MindFormers "
                "does without the cache (use_past: True, or leaving the key out, decodes with the KV cache)",
                config.source_file,
            )
            generate_kwargs["use_past"] = False
        results = []
        for start in range(0, len(prompts), batch_size):
            extra = dict(generate_kwargs)
            if adapter_ids is not None:
                extra["adapter_ids"] = adapter_ids[start : start + batch_size]
            results.extend(text_generator(prompts[start : start + batch_size], batch_size=batch_size, **extra))
        if get_rank() != 0:  # every rank generates the same text under tensor parallelism
            return results
        path = write_results(results, config.get("save_file"))
        for item in results:
            logger.info("output result is: %s", item)
        logger.info("output result is saved at: %s", path)
        return results
