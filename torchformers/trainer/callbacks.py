"""Training callbacks registered under CALLBACK (MindFormers `mindformers/core/callback/callback.py`).

A callback gets `on_train_begin`, `on_train_step_end`, `on_train_epoch_end` and `on_train_end`
with a `RunContext` (the loop's state: epoch, step, loss, lr, grad norm, tokens, ...).

* `MFLossMonitor`: one log line per `per_print_times` steps in MindFormers' shape plus tokens/s
  and an MFU estimate, and a progress bar with ETA when stdout is a terminal.
* `CheckpointMonitor`: saves the training state every `save_checkpoint_steps` steps and at the end,
  keeps `keep_checkpoint_max` of them (`checkpointing.py` has the layout and the atomic writes), and
  with each save the weights alone, as MindFormers 1.3.2 names them:
  `checkpoint_network/rank_<r>/<prefix>_rank_<r>-network.<ext>` (`save_network_params`) and
  `checkpoint_trainable/rank_<r>/<prefix>_rank_<r>-trainable_params.<ext>` (`save_trainable_params`,
  and always for LoRA), one file each that every save replaces.
* `EvalCallBack`: runs an evaluation function every `step_interval` steps / `epoch_interval` epochs.
* `ObsMonitor`: ModelArts/OBS upload in MindFormers; in MindFormers' default callback list, so
  accepted and does nothing here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from torchformers.tools.logger import logger
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.config import ConfigError
from torchformers.trainer.checkpointing import checkpoint_dir
from torchformers.utils import atomic_write_bytes

__all__ = [
    "Callback",
    "CheckpointMonitor",
    "EvalCallBack",
    "MFLossMonitor",
    "MetricsWriter",
    "ObsMonitor",
    "RunContext",
    "TensorBoardWriter",
]


@dataclass
class RunContext:
    """What callbacks see of the running loop."""

    loop: object = None
    epoch: int = 0  # 0-based current epoch
    epochs: int = 1
    global_step: int = 0  # optimizer steps done
    step_in_epoch: int = 0
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    loss: float = float("nan")
    lr: float = 0.0
    grad_norm: float | None = None
    loss_scale: float = 1.0
    overflow: bool = False
    tokens: int = 0
    step_time: float = 0.0
    flops_per_token: float = 0.0
    rank: int = 0
    output_dir: str = "./output"
    metrics: dict = field(default_factory=dict)
    start_time: float = field(default_factory=time.perf_counter)
    start_step: int = 0


class Callback:
    def on_train_begin(self, ctx: RunContext) -> None:
        pass

    def on_train_step_end(self, ctx: RunContext) -> None:
        pass

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        pass

    def on_train_end(self, ctx: RunContext) -> None:
        pass


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float:
    """A rough peak FLOP/s for the MFU estimate; `TORCHFORMERS_PEAK_FLOPS` overrides it."""
    if os.environ.get("TORCHFORMERS_PEAK_FLOPS"):
        return float(os.environ["TORCHFORMERS_PEAK_FLOPS"])
    low = dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "A10": 125e12, "V100": 125e12}
        for key, value in table.items():
            if key in name:
                return value if low else value / (2 if key in ("V100",) else 14 if key.startswith("H") else 16)
        return 100e12
    # about 100 GFLOP/s fp32 per core with AVX2 FMA; bf16 matmuls run ~4x faster on AMX/AVX512-BF16 cores
    per_core = 100e9 * (4 if low else 1)
    return per_core * torch.get_num_threads()


@MindFormerRegister.register(MindFormerModuleType.CALLBACK)
class MFLossMonitor(Callback):
    """Logs `Epoch:[e/E], step:[s/S], loss, per_step_time, lr, overflow cond, loss_scale, global_norm,
    tokens/s, MFU` every `per_print_times` steps."""

    def __init__(
        self,
        learning_rate=None,
        per_print_times: int = 1,
        micro_batch_num: int = 1,
        micro_batch_interleave_num: int = 1,
        origin_epochs: int | None = None,
        dataset_size: int | None = None,
        initial_epoch: int = 0,
        initial_step: int = 0,
        global_batch_size: int = 0,
        gradient_accumulation_steps: int = 1,
        check_for_nan_in_loss_and_grad: bool = False,
        calculate_per_token_loss: bool = False,
        peak_flops: float | None = None,
        **kwargs,
    ) -> None:
        if int(per_print_times) < 1:
            raise ConfigError(f"MFLossMonitor.per_print_times must be >= 1, got {per_print_times!r}")
        self.per_print_times = int(per_print_times)
        self.peak = peak_flops
        self.progress = sys.stdout.isatty()
        self._last = None

    def on_train_begin(self, ctx: RunContext) -> None:
        self._last = time.perf_counter()
        self._tokens = 0
        self._steps = 0
        if self.peak is None:
            loop = ctx.loop
            self.peak = peak_flops(loop.device, getattr(loop.step_fn, "mixed_dtype", None))

    def on_train_step_end(self, ctx: RunContext) -> None:
        self._tokens += ctx.tokens
        self._steps += 1
        if ctx.global_step % self.per_print_times:
            return
        now = time.perf_counter()
        elapsed = max(now - self._last, 1e-9)
        tokens_s = self._tokens / elapsed
        mfu = 100.0 * tokens_s * ctx.flops_per_token / self.peak if self.peak else 0.0
        steps = ctx.steps_per_epoch or "?"
        norm = f"{ctx.grad_norm:.4f}" if ctx.grad_norm is not None else "-"
        logger.info(
            "{ Epoch:[%3d/%3d], step:[%5d/%5s], loss: %5.3f, per_step_time: %dms, lr: %.6g, overflow cond: %s, "
            "loss_scale: %s, global_norm: %s, tokens/s: %.1f, MFU: %.1f%% }",
            ctx.epoch + 1, ctx.epochs, ctx.step_in_epoch, steps, ctx.loss, int(1000 * elapsed / self._steps),
            ctx.lr, ctx.overflow, ctx.loss_scale, norm, tokens_s, mfu,
        )  # fmt: skip
        ctx.metrics.update(tokens_per_s=tokens_s, mfu=mfu)
        if self.progress and ctx.total_steps:
            done = ctx.global_step / ctx.total_steps
            rate = (ctx.global_step - ctx.start_step) / max(now - ctx.start_time, 1e-9)
            eta = (ctx.total_steps - ctx.global_step) / rate if rate > 0 else 0.0
            bar = "█" * int(30 * done) + " " * (30 - int(30 * done))
            print(f"  {100 * done:5.1f}% |{bar}| {tokens_s:.1f} tokens/s  ETA {_hms(eta)}", flush=True)
        self._last, self._tokens, self._steps = now, 0, 0


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@MindFormerRegister.register(MindFormerModuleType.CALLBACK)
class CheckpointMonitor(Callback):
    """Saves `<output_dir>/checkpoint/rank_<r>/<prefix>_rank_<r>-<epoch>_<step>.<ext>` with resume state, and
    the weights alone to `checkpoint_network/` / `checkpoint_trainable/`."""

    FORMATS = {"safetensors": ".safetensors", "ckpt": ".ckpt"}

    def __init__(
        self,
        prefix: str = "CKP",
        directory: str | None = None,
        config=None,
        save_checkpoint_steps: int = 1,
        save_checkpoint_seconds: int = 0,
        keep_checkpoint_max: int = 5,
        keep_checkpoint_per_n_minutes: int = 0,
        integrated_save: bool = True,
        save_network_params: bool = True,
        save_trainable_params: bool = False,
        async_save: bool = False,
        saved_network=None,
        append_info=None,
        enc_key=None,
        enc_mode: str = "AES-GCM",
        exception_save: bool = False,
        global_batch_size: int | None = None,
        checkpoint_format: str = "ckpt",
        remove_redundancy: bool = False,
        **kwargs,
    ) -> None:
        if checkpoint_format not in self.FORMATS:
            raise ConfigError(
                f"CheckpointMonitor.checkpoint_format must be one of {sorted(self.FORMATS)}, got {checkpoint_format!r}"
            )
        if int(save_checkpoint_steps) < 1:
            raise ConfigError(f"CheckpointMonitor.save_checkpoint_steps must be >= 1, got {save_checkpoint_steps!r}")
        if enc_key is not None:
            raise ConfigError("CheckpointMonitor.enc_key: encrypted checkpoints are not supported")
        self.prefix = prefix
        self.directory = directory
        self.save_checkpoint_steps = int(save_checkpoint_steps)
        self.save_checkpoint_seconds = float(save_checkpoint_seconds or 0)
        self.keep_checkpoint_max = int(keep_checkpoint_max)
        self.save_network_params = bool(save_network_params)
        self.save_trainable_params = bool(save_trainable_params)
        self.suffix = self.FORMATS[checkpoint_format]
        self.last_saved_step = -1
        self.last_path: Path | None = None
        self._last_time = time.time()

    def folder(self, ctx: RunContext, kind: str = "checkpoint") -> Path:
        root = self.directory or ctx.output_dir
        return checkpoint_dir(root, ctx.rank, kind)

    def file_name(self, ctx: RunContext) -> str:
        return f"{self.prefix}_rank_{ctx.rank}-{ctx.epoch + 1}_{ctx.step_in_epoch}{self.suffix}"

    def weights_file_name(self, ctx: RunContext, kind: str) -> str:
        """`<prefix>_rank_<r>-network.<ext>` or `<prefix>_rank_<r>-trainable_params.<ext>` (MindFormers' names)."""
        return f"{self.prefix}_rank_{ctx.rank}-{kind}{self.suffix}"

    def on_train_step_end(self, ctx: RunContext) -> None:
        due = ctx.global_step % self.save_checkpoint_steps == 0
        if self.save_checkpoint_seconds and time.time() - self._last_time >= self.save_checkpoint_seconds:
            due = True
        if due:
            self.save(ctx)

    def on_train_end(self, ctx: RunContext) -> None:
        if ctx.global_step > 0 and self.last_saved_step != ctx.global_step:
            self.save(ctx)

    def save(self, ctx: RunContext) -> Path:
        folder = self.folder(ctx)
        path = folder / self.file_name(ctx)
        ctx.loop.save_train_state(path)
        meta = {"last_epoch": ctx.epoch + 1, "last_step": ctx.step_in_epoch, "last_ckpt_file": path.name}
        atomic_write_bytes(folder / "meta.json", json.dumps(meta).encode())
        if self.save_network_params or self.save_trainable_params:
            ctx.loop.save_weights(self, ctx)
        self.last_saved_step, self.last_path, self._last_time = ctx.global_step, path, time.time()
        logger.info("saved checkpoint %s", path)
        self._rotate(folder)
        return path

    def _rotate(self, folder: Path) -> None:
        if self.keep_checkpoint_max <= 0:
            return
        files = sorted(folder.glob(f"{self.prefix}_rank_*{self.suffix}"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.keep_checkpoint_max)]:
            for extra in (old, Path(f"{old}.json")):
                if extra.exists():
                    extra.unlink()


@MindFormerRegister.register(MindFormerModuleType.CALLBACK)
class ObsMonitor(Callback):
    """ModelArts OBS upload in MindFormers; nothing to upload here, so it does nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass


@MindFormerRegister.register(MindFormerModuleType.CALLBACK)
class EvalCallBack(Callback):
    """Calls `eval_func()` (returning a metrics dict) every `step_interval` steps or `epoch_interval` epochs."""

    def __init__(self, eval_func=None, step_interval: int = 100, epoch_interval: int = -1) -> None:
        self.eval_func, self.step_interval, self.epoch_interval = eval_func, int(step_interval), int(epoch_interval)
        self.history: list[dict] = []

    def _run(self, ctx: RunContext) -> None:
        if self.eval_func is None:
            return
        start = time.perf_counter()
        metrics = self.eval_func()
        logger.info(
            "eval at epoch %d step %d: %s (%.1fs)",
            ctx.epoch + 1, ctx.global_step, ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items()),
            time.perf_counter() - start,
        )  # fmt: skip
        ctx.metrics.update({f"eval_{k}": v for k, v in metrics.items()})
        self.history.append({"step": ctx.global_step, **metrics})

    def on_train_step_end(self, ctx: RunContext) -> None:
        if self.step_interval > 0 and ctx.global_step % self.step_interval == 0:
            self._run(ctx)

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        if self.epoch_interval > 0 and (ctx.epoch + 1) % self.epoch_interval == 0:
            self._run(ctx)


class MetricsWriter(Callback):
    """Appends one JSON line per step to `<output_dir>/metrics.jsonl`; draws `loss_curve.png` at the end."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.losses: list[tuple[int, float]] = []

    def on_train_begin(self, ctx: RunContext) -> None:
        if ctx.rank != 0:
            return
        self.path = Path(ctx.output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in on_train_end

    def on_train_step_end(self, ctx: RunContext) -> None:
        self.losses.append((ctx.global_step, ctx.loss))
        if self.path is None:
            return
        record = {
            "epoch": ctx.epoch + 1,
            "step": ctx.global_step,
            "loss": ctx.loss,
            "lr": ctx.lr,
            "grad_norm": ctx.grad_norm,
            "loss_scale": ctx.loss_scale,
            "tokens": ctx.tokens,
            "step_time": ctx.step_time,
            **ctx.metrics,
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        ctx.metrics.clear()

    def on_train_end(self, ctx: RunContext) -> None:
        if self.path is None:
            return
        self._file.close()
        try:  # optional dependency (the `plot` extra)
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.info("matplotlib is not installed: no loss_curve.png")
            return
        if not self.losses:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        steps, losses = zip(*self.losses)
        ax.plot(steps, losses, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(Path(ctx.output_dir) / "loss_curve.png", dpi=100)
        plt.close(fig)


class TensorBoardWriter(Callback):
    """Scalars to `<output_dir>/tensorboard/` when the `tensorboard` package is installed."""

    @staticmethod
    def available() -> bool:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
        return True

    def on_train_begin(self, ctx: RunContext) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency: needs the tensorboard package

        self.writer = SummaryWriter(str(Path(ctx.output_dir) / "tensorboard" / f"rank_{ctx.rank}"))

    def on_train_step_end(self, ctx: RunContext) -> None:
        self.writer.add_scalar("loss", ctx.loss, ctx.global_step)
        self.writer.add_scalar("lr", ctx.lr, ctx.global_step)
        if ctx.grad_norm is not None:
            self.writer.add_scalar("global_norm", ctx.grad_norm, ctx.global_step)
        for key, value in ctx.metrics.items():
            self.writer.add_scalar(key, value, ctx.global_step)

    def on_train_end(self, ctx: RunContext) -> None:
        self.writer.close()
