"""The training step under a parallel layout: the pipeline schedule under pipeline parallelism, otherwise
the `runner_wrapper` step with its reported loss averaged over the data-parallel ranks.

`parallel_train_step(plan, step_fn)` makes the choice from what `torchformers.parallel.parallelize_model`
did (its `ParallelPlan`). `PipelineTrainStep` drives a GPipe schedule (torchtitan's pipelined training
step): the model decides which tokens are learned (`loss_inputs`) and takes the loss on the last stage
(`loss_from_hidden`), summed per micro-batch and divided by the step's token count, so the micro-batch
losses add up to the per-token mean of single-device training.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from torchformers.errors import ConfigError
from torchformers.parallel.parallelize import ParallelPlan
from torchformers.parallel.pipeline_parallel import build_pipeline_schedule
from torchformers.trainer.wrapper import NonFiniteLossError, StepOutput, batch_to_inputs

__all__ = ["AveragedLossStep", "PipelineTrainStep", "clip_grad_norm_across", "parallel_train_step"]


def parallel_train_step(plan: ParallelPlan, step_fn):
    """The training step for `plan`'s layout, built around `step_fn` (an `MFTrainOneStepCell`)."""
    if plan.dims.pp > 1:
        step = PipelineTrainStep(plan.model, step_fn, plan.pp_mesh, plan.dims.micro_batch_num, plan.device)
    else:
        group = plan.dp_mesh.get_group() if plan.dims.dp > 1 else None
        step = AveragedLossStep(step_fn, group, plan.device)
    step.writes_weights = plan.writes_weights
    return step


class AveragedLossStep:
    """Reports the loss averaged over data-parallel ranks (the global batch's loss when their token counts
    agree); gradients are already averaged by FSDP2."""

    def __init__(self, inner, group, device: torch.device) -> None:
        self.inner, self.group, self.device = inner, group, device

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, micro_batches: list) -> StepOutput:
        out = self.inner(micro_batches)
        if self.group is None:
            return out
        loss = torch.tensor([out.loss], dtype=torch.float64 if self.device.type == "cpu" else torch.float32,
                            device=self.device)  # fmt: skip
        dist.all_reduce(loss, op=dist.ReduceOp.AVG if dist.get_backend(self.group) == "nccl" else dist.ReduceOp.SUM,
                        group=self.group)  # fmt: skip
        if dist.get_backend(self.group) != "nccl":
            loss /= dist.get_world_size(self.group)
        out.loss = float(loss)
        return out


class PipelineTrainStep:
    """The `runner_wrapper` step under pipeline parallelism: `__call__(micro_batches) -> StepOutput`.

    Takes gradient clipping and the mixed-precision dtype from the step it replaces (`MFTrainOneStepCell`);
    the gradient norm is summed over the stages before clipping, so clipping acts as on one device.
    fp16 loss scaling is not supported here.
    """

    def __init__(self, model: nn.Module, inner, pp_mesh, micro_batch_num: int, device: torch.device) -> None:
        if getattr(inner, "scaler", None) is not None:
            raise ConfigError("pipeline parallelism with float16 loss scaling is not supported; use bfloat16")
        self.model, self.inner, self.device = model, inner, device
        self.optimizer = inner.optimizer
        self.scaler = None
        self.mixed_dtype = inner.mixed_dtype
        self.group = pp_mesh.get_group()
        self.stage_index = pp_mesh.get_local_rank()
        self.num_stages = pp_mesh.size()
        self.first, self.last = self.stage_index == 0, self.stage_index == self.num_stages - 1
        if self.first and self.last:
            raise ConfigError("pipeline parallelism needs pipeline_stage > 1")
        self._count = 1.0
        self.schedule = build_pipeline_schedule(model, pp_mesh, micro_batch_num, device, self._loss)
        self.micro_batch_num = micro_batch_num
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # summed over the micro-batch and divided by the token count of the whole step: the micro-batch
        # losses add up to the mean
        return self.model.loss_from_hidden(hidden, targets, "sum") / self._count

    def __call__(self, micro_batches: list) -> StepOutput:
        n = len(micro_batches)
        ignore = self.model.config.ignore_token_id
        total = torch.zeros((), dtype=torch.float64)
        tokens = 0
        for batch in micro_batches:
            inputs = batch_to_inputs(batch, self.device)
            x, targets = self.model.loss_inputs(inputs["input_ids"], inputs.get("labels"), inputs.get("loss_mask"))
            tokens += x.numel()
            # as the model's mean: sum / (count + 1e-8), averaged over the accumulated batches
            self._count = float((targets != ignore).sum()) * n + 1e-8 * n
            if x.shape[0] % self.micro_batch_num:
                raise ConfigError(
                    f"runner_config.batch_size ({x.shape[0]}) must be divisible by "
                    f"parallel_config.micro_batch_num ({self.micro_batch_num})"
                )
            losses: list[torch.Tensor] = []
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
    # start-up time: DTensor is only loaded when a parallel layout is used
    from torch.distributed.tensor import DTensor

    total = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is None:
            continue
        norm = torch.linalg.vector_norm(p.grad.float())
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
