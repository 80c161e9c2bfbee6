"""The training loop (nanoGPT's loop with MindFormers' knobs): steps, epochs, callbacks, resume, signals.

`TrainLoop.run(resume_from)` iterates the data set epoch by epoch, taking
`gradient_accumulation_steps` micro-batches per optimizer step, sets the learning rate of the step
from the schedule, runs the step function (`MFTrainOneStepCell`), and calls the callbacks. It stops
at the end of `epochs` or at `stop_step`. SIGTERM and SIGINT finish the current step, save a
checkpoint and exit with status 128 + signal. A NaN/Inf loss stops the run before the optimizer
applies it, naming the last good checkpoint.

Resume restores weights, optimizer moments, the step and epoch, the loss scale, every RNG and the
data position (the data set's own `state_dict()` when it has one, otherwise, as MindFormers does, by
skipping the batches of the steps already done in the epoch, from the checkpoint's `step_num`), so a
resumed run continues bit for bit on CPU. A MindFormers training checkpoint resumes the same way.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch
from torch import nn

from torchformers.parallel.checkpoint import (
    full_model_state,
    is_distributed_model,
    is_sharded_train_state,
    load_sharded_train_state,
    save_sharded_train_state,
)
from torchformers.tools.logger import logger
from torchformers.trainer.callbacks import Callback, CheckpointMonitor, RunContext
from torchformers.trainer.checkpointing import (
    atomic_save_tensors,
    get_rng_state,
    load_train_state,
    model_state_to_save,
    save_train_state,
    set_rng_state,
)
from torchformers.trainer.wrapper import NonFiniteLossError

__all__ = ["TrainLoop", "TrainingInterrupted", "flops_per_token"]


class TrainingInterrupted(SystemExit):
    """SIGTERM/SIGINT arrived; a checkpoint was saved. The exit status is 128 + the signal number."""


def flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token: each matmul weight of the linear layers (LoRA adapters included) costs 2
    per parameter forward, 2 for the gradient of its input and 2 for its own gradient when it trains
    (6N for full training, about 4N for adapters on frozen weights); plus causal attention
    (6 x layers x hidden x seq)."""
    seen, flops = set(), 0.0
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        for param in module.parameters(recurse=False):
            if param.dim() >= 2 and id(param) not in seen:  # weights and adapter matrices, not biases
                seen.add(id(param))
                flops += (6.0 if param.requires_grad else 4.0) * param.numel()
    config = getattr(model, "config", None)
    layers = getattr(config, "num_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    seq = getattr(config, "seq_length", 0) or 0
    return flops + 6.0 * layers * hidden * seq


class TrainLoop:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_schedule,
        dataset,
        step_fn,
        *,
        epochs: int = 1,
        gradient_accumulation_steps: int = 1,
        stop_step: int = 0,
        callbacks: list[Callback] | None = None,
        output_dir: str | Path = "./output",
        rank: int = 0,
        device: torch.device | None = None,
        global_batch_size: int = 0,
        extra_info: dict | None = None,
    ) -> None:
        self.model, self.optimizer, self.lr_schedule, self.dataset = model, optimizer, lr_schedule, dataset
        self.step_fn = step_fn
        self.epochs, self.gas, self.stop_step = int(epochs), int(gradient_accumulation_steps), int(stop_step or 0)
        self.callbacks = list(callbacks or [])
        self.output_dir, self.rank = str(output_dir), rank
        self.device = device or next(model.parameters()).device
        self.global_batch_size = global_batch_size
        self.extra_info = extra_info or {}
        self.ctx = RunContext(loop=self, epochs=self.epochs, rank=rank, output_dir=self.output_dir)
        self._signal: int | None = None

    # ------------------------------------------------------------------ state
    def _monitor(self) -> CheckpointMonitor:
        for cb in self.callbacks:
            if isinstance(cb, CheckpointMonitor):
                return cb
        return CheckpointMonitor(checkpoint_format="safetensors")

    def save_train_state(self, path: Path) -> None:
        ctx = self.ctx
        data_state = self.dataset.state_dict() if hasattr(self.dataset, "state_dict") else None
        scaler = getattr(self.step_fn, "scaler", None)
        info = {
            "epoch_num": ctx.epoch + 1,
            "step_num": ctx.global_step,  # steps since the start of training, as MindFormers counts them
            "global_step": ctx.global_step,
            "loss_scale": ctx.loss_scale,
            "global_batch_size": self.global_batch_size,
            "data_state": data_state,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "lr_schedule": self.lr_schedule.describe() if hasattr(self.lr_schedule, "describe") else None,
            "rng": get_rng_state(),
            "loss": ctx.loss,
            **self.extra_info,
        }

        if is_distributed_model(self.model):
            save_sharded_train_state(path, self.model, self.optimizer, info)
        else:
            save_train_state(path, self.model, self.optimizer, info)

    def save_weights(self, monitor: CheckpointMonitor, ctx: RunContext) -> None:
        """Weights only (`checkpoint_network/`) and, for a pet method or save_trainable_params, the trainable ones
        (`checkpoint_trainable/`), each one file that every save replaces, named as MindFormers names them."""

        pet = getattr(self.model, "pet_config", None) is not None
        network = monitor.folder(ctx, "checkpoint_network") / monitor.weights_file_name(ctx, "network")
        if is_distributed_model(self.model):  # whole tensors, written once per pipeline stage
            state = full_model_state(self.model) if monitor.save_network_params else None
            if state is not None and getattr(self.step_fn, "writes_weights", True):
                atomic_save_tensors(state, network)
            return
        if monitor.save_network_params:
            atomic_save_tensors(model_state_to_save(self.model), network)
        if monitor.save_trainable_params or pet:
            path = monitor.folder(ctx, "checkpoint_trainable") / monitor.weights_file_name(ctx, "trainable_params")
            atomic_save_tensors(model_state_to_save(self.model, trainable_only=True), path)

    # ------------------------------------------------------------------ run
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            logger.warning("received signal %d: saving a checkpoint after this step, then exiting", signum)
            self._signal = signum
            signal.signal(signum, previous[signum])  # a second signal acts at once

        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, handler)
        return previous

    def run(self, resume_from: Path | None = None) -> RunContext:
        ctx = self.ctx
        try:
            n_micro = len(self.dataset)
        except TypeError:
            n_micro = None
        ctx.steps_per_epoch = n_micro // self.gas if n_micro is not None else None
        if ctx.steps_per_epoch == 0:
            raise ValueError(
                f"the training data has {n_micro} batches per epoch, fewer than gradient_accumulation_steps "
                f"({self.gas}): no optimizer step is possible (lower runner_config.batch_size or add data)"
            )
        ctx.total_steps = self.epochs * ctx.steps_per_epoch if ctx.steps_per_epoch else None
        if self.stop_step and ctx.total_steps:
            ctx.total_steps = min(ctx.total_steps, self.stop_step)
        if hasattr(self.lr_schedule, "resolve_total_steps"):
            total = self.epochs * ctx.steps_per_epoch if ctx.steps_per_epoch else (self.stop_step or None)
            if total is None and self.lr_schedule.total_steps is None:
                raise ValueError("lr_schedule.total_steps is -1 but the data set has no length; set total_steps")
            self.lr_schedule.resolve_total_steps(total or self.lr_schedule.total_steps, ctx.steps_per_epoch)
        ctx.flops_per_token = flops_per_token(self.model)

        start_epoch, skip, info = 0, 0, None
        if resume_from is not None:
            load = load_sharded_train_state if is_sharded_train_state(resume_from) else load_train_state
            info = load(resume_from, self.model, self.optimizer)
            ctx.global_step = int(info["global_step"])
            start_epoch, ctx.step_in_epoch = self._resume_position(info)
            skip = ctx.step_in_epoch * self.gas
            self._restore_loss_scale(info)
            logger.info(
                "resumed from %s at epoch %d, step %d of the epoch (global step %d): %d batches skipped",
                resume_from, start_epoch + 1, ctx.step_in_epoch, ctx.global_step, skip,
            )  # fmt: skip
        ctx.start_step = ctx.global_step
        ctx.start_time = time.perf_counter()

        previous = self._install_signals()
        try:
            for cb in self.callbacks:
                cb.on_train_begin(ctx)
            if info is not None and info.get("rng"):
                set_rng_state(info["rng"])  # last, so nothing between here and the first step draws numbers
            self._train(start_epoch, skip, info)
            for cb in self.callbacks:
                cb.on_train_end(ctx)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return ctx

    def _resume_position(self, info: dict) -> tuple[int, int]:
        """`(epoch, steps done in it)` from the checkpoint's `step_num`, as MindFormers resumes: the steps since
        the start, scaled by the old over the new global batch size when it changed, over the steps per epoch."""
        steps = int(info["step_num"])
        saved_batch = int(info.get("global_batch_size") or 0)
        if saved_batch and self.global_batch_size and saved_batch != self.global_batch_size:
            scaled = int(steps * saved_batch / self.global_batch_size)
            logger.info(
                "resume: the global batch size changed from %d to %d: %d steps done count as %d",
                saved_batch, self.global_batch_size, steps, scaled,
            )  # fmt: skip
            steps = scaled
        per_epoch = self.ctx.steps_per_epoch
        if per_epoch:
            return steps // per_epoch, steps % per_epoch
        # a data set without a length: the epoch from the file, and its steps from the data set's own state
        epoch = int(info.get("epoch_num") or 1) - 1
        if epoch == 0:
            return 0, steps
        if info.get("data_state") is None:
            logger.warning(
                "resume: the data set has no length and the checkpoint no data position: epoch %d restarts from "
                "its first batch", epoch + 1,
            )  # fmt: skip
        return epoch, 0

    def _restore_loss_scale(self, info: dict) -> None:
        scaler = getattr(self.step_fn, "scaler", None)
        if scaler is None:
            return
        if info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        elif info.get("loss_scale") is not None and scaler.is_enabled():
            state = scaler.state_dict()
            state["scale"] = float(info["loss_scale"])
            if "current_iterator_step" in info and "last_overflow_iterator_step" in info:
                # MindSpore's DynamicLossScaleUpdateCell: clean steps since the last overflow or growth
                clean = int(info["current_iterator_step"]) - 1 - int(info["last_overflow_iterator_step"])
                state["_growth_tracker"] = max(0, clean)
            scaler.load_state_dict(state)

    def _stop_due(self) -> bool:
        return bool(self.stop_step) and self.ctx.global_step >= self.stop_step

    def _train(self, start_epoch: int, skip: int, info: dict | None) -> None:
        ctx, model = self.ctx, self.model
        model.train()
        for epoch in range(start_epoch, self.epochs):
            if self._stop_due():
                break
            ctx.epoch = epoch
            if epoch != start_epoch:
                ctx.step_in_epoch, skip = 0, 0
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            data_state = info.get("data_state") if info is not None and epoch == start_epoch else None
            if data_state is not None and hasattr(self.dataset, "load_state_dict"):
                self.dataset.load_state_dict(data_state)  # exact, shuffled order included
                skip_now = 0
            else:
                skip_now = skip
            iterator = iter(self.dataset)
            for _ in range(skip_now):
                next(iterator, None)
            while not self._stop_due():
                micro = []
                for batch in iterator:
                    micro.append(batch)
                    if len(micro) == self.gas:
                        break
                if len(micro) < self.gas:  # an incomplete accumulation at the epoch's end is dropped
                    break
                self._step(micro)
                if self._signal is not None:
                    self._interrupt()
            for cb in self.callbacks:
                cb.on_train_epoch_end(ctx)

    def _step(self, micro: list) -> None:
        ctx = self.ctx
        lr = self.lr_schedule(ctx.global_step) if self.lr_schedule is not None else self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        try:
            out = self.step_fn(micro)
        except NonFiniteLossError as err:
            last = self._monitor().last_path
            where = f"epoch {ctx.epoch + 1}, step {ctx.step_in_epoch + 1} (global step {ctx.global_step + 1})"
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
            message = (
                f"training stopped: {err} at {where}; the update was not applied and {keep}. "
                "Lower the learning rate, enable runner_wrapper.use_clip_grad, or check the data."
            )
            logger.error(message)
            raise NonFiniteLossError(message) from None
        ctx.global_step += 1
        ctx.step_in_epoch += 1
        ctx.loss, ctx.lr, ctx.grad_norm = out.loss, lr, out.grad_norm
        ctx.loss_scale, ctx.overflow, ctx.tokens = out.loss_scale, out.overflow, out.tokens
        ctx.step_time = time.perf_counter() - start
        for cb in self.callbacks:
            cb.on_train_step_end(ctx)

    def _interrupt(self) -> None:
        signum = self._signal
        monitor = self._monitor()
        path = monitor.save(self.ctx) if monitor.last_saved_step != self.ctx.global_step else monitor.last_path
        logger.warning("stopped by signal %d at global step %d; checkpoint %s", signum, self.ctx.global_step, path)
        raise TrainingInterrupted(128 + signum)
