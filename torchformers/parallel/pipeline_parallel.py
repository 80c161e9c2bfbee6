"""Pipeline parallelism (`pipeline_stage`, `micro_batch_num`) with `torch.distributed.pipelining`.

The decoder layers are divided evenly over the stages (earlier stages take the remainder), as
MindFormers does without `offset`. Each rank keeps only its stage's modules: the others are
removed from the model, and `model.layers` becomes a `ModuleDict` keyed by the original layer
numbers, so every parameter keeps its full name (`model.layers.7.attention.wq.weight`) and
checkpoints move between layouts. The stage's forward is written here, from the model's parts
(embedding on the first stage; norm, `lm_head` and the loss on the last), the way torchtitan
splits its models. A step runs `ScheduleGPipe` over `micro_batch_num` micro-batches; the loss is
the token-weighted mean over the whole batch, as in single-device training.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchformers.tools.register.config import ConfigError

__all__ = ["PipelineTrainStep", "split_into_stage", "stage_layer_ids"]


def stage_layer_ids(num_layers: int, num_stages: int, stage: int) -> list[int]:
    base, extra = divmod(num_layers, num_stages)
    start = stage * base + min(stage, extra)
    return list(range(start, start + base + (1 if stage < extra else 0)))


def split_into_stage(model: nn.Module, stage: int, num_stages: int) -> list[int]:
    """Drop from `model` (in place) every module stage `stage` does not run; returns its layer ids."""
    config = model.config
    if num_stages > config.num_layers:
        raise ConfigError(
            f"parallel_config.pipeline_stage ({num_stages}) exceeds model_config.num_layers ({config.num_layers})"
        )
    if getattr(config, "tie_word_embeddings", False):
        raise ConfigError(
            "parallel_config.pipeline_stage > 1 puts the embedding and lm_head on different ranks, so "
            "model_config.tie_word_embeddings must be False"
        )
    base = model.model
    ids = stage_layer_ids(config.num_layers, num_stages, stage)
    layers = base.layers
    base.layers = nn.ModuleDict({str(i): layers[i] for i in ids})
    if stage != 0:
        base.tok_embeddings = None
    if stage != num_stages - 1:
        base.norm_out = None
        model.lm_head = None
    return ids


class _StageModule(nn.Module):
    """The forward of one stage: token ids or hidden states in, hidden states or logits out."""

    def __init__(self, model: nn.Module, first: bool, last: bool) -> None:
        super().__init__()
        self.model, self.first, self.last = model, first, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.model.model
        h = base.tok_embeddings(x) if self.first else x  # (B, T, hidden)
        positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        cos, sin, precision = base.rope_and_precision(positions, h.device.type)
        with precision:
            for layer in base.layers.values():
                h = layer(h, cos, sin, None, None)
        if not self.last:
            return h
        return self.model.lm_head(base.norm_out(h)).float()  # (B, T, vocab)


class PipelineTrainStep:
    """The `runner_wrapper` step under pipeline parallelism: `__call__(micro_batches) -> StepOutput`.

    Takes gradient clipping and the autocast dtype from the step it replaces (`MFTrainOneStepCell`);
    the gradient norm is summed over the stages before clipping, so clipping acts as on one device.
    fp16 loss scaling is not supported here.
    """

    def __init__(self, model: nn.Module, inner, pp_mesh, micro_batch_num: int, device: torch.device,
                 loss_group=None) -> None:  # fmt: skip
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        if getattr(inner, "scaler", None) is not None:
            raise ConfigError("pipeline parallelism with float16 loss scaling is not supported; use bfloat16")
        self.model, self.inner, self.device = model, inner, device
        self.optimizer = inner.optimizer
        self.scaler = None
        self.autocast_dtype = inner.autocast_dtype
        self.group = pp_mesh.get_group()
        self.stage_index = pp_mesh.get_local_rank()
        self.num_stages = pp_mesh.size()
        self.first, self.last = self.stage_index == 0, self.stage_index == self.num_stages - 1
        self.module = _StageModule(model, self.first, self.last)
        stage = PipelineStage(self.module, self.stage_index, self.num_stages, device, group=self.group)
        self._count = 1.0
        self.schedule = ScheduleGPipe(stage, micro_batch_num, loss_fn=self._loss, scale_grads=False)
        self.micro_batch_num = micro_batch_num
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.loss_group = loss_group

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # sum over the micro-batch / tokens of the whole step: the micro-batch losses add up to the mean
        ignore = -100
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore, reduction="sum") / (
            self._count
        )

    def __call__(self, micro_batches: list):
        from torchformers.trainer.wrapper import NonFiniteLossError, StepOutput, batch_to_inputs

        cfg = self.model.config
        n = len(micro_batches)
        total = torch.zeros((), dtype=torch.float64)
        tokens = 0
        for batch in micro_batches:
            inputs = batch_to_inputs(batch, self.device)
            ids = inputs["input_ids"]
            x, targets = ids[:, :-1], inputs.get("labels", ids)[:, 1:].long()
            if "loss_mask" in inputs:
                lm = inputs["loss_mask"]
                mask = (lm[:, 1:] if lm.shape[1] == ids.shape[1] else lm).bool()
            else:
                mask = (x != cfg.pad_token_id) & (targets != cfg.ignore_token_id)
            targets = targets.masked_fill(~mask, -100)
            tokens += x.numel()
            self._count = float(mask.sum()) * n + 1e-8 * n  # as compute_loss: sum / (count + 1e-8), averaged
            if x.shape[0] % self.micro_batch_num:
                raise ConfigError(
                    f"runner_config.batch_size ({x.shape[0]}) must be divisible by "
                    f"parallel_config.micro_batch_num ({self.micro_batch_num})"
                )
            losses: list[torch.Tensor] = []
            with self.inner.autocast():
                if self.first and self.last:
                    raise ConfigError("pipeline parallelism needs pipeline_stage > 1")
                if self.first:
                    self.schedule.step(x)
                elif self.last:
                    self.schedule.step(target=targets, losses=losses)
                else:
                    self.schedule.step()
            if self.last:
                total += sum(float(v) for v in losses)
        # the last stage knows the loss; every rank reports it
        loss = total.to(self.device, torch.float32).reshape(1)
        dist.broadcast(loss, group_src=self.num_stages - 1, group=self.group)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss is {loss_value}")
        grad_norm = clip_grad_norm_across(
            self.params, self.inner.max_grad_norm if self.inner.use_clip_grad else float("inf"), self.group, self.device
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss_value, grad_norm, 1.0, False, tokens)


def _local_sq_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    total = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        norm = torch.linalg.vector_norm(g.float())
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total = total + norm.to(total.device) ** 2
    return total


def clip_grad_norm_across(params: list[torch.Tensor], max_norm: float, group, device: torch.device) -> float:
    """Global L2 norm of the gradients held on the ranks of `group` (each holding different parameters);
    scales them so the norm is at most `max_norm`. Returns the norm before clipping."""
    sq = _local_sq_norm(params, device)
    dist.all_reduce(sq, group=group)
    norm = float(sq.sqrt())
    if math.isfinite(max_norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
    return norm
