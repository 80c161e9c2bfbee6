"""Optimizers registered under OPTIMIZER with MindFormers' names, built on `torch.optim`.

MindFormers' `AdamW`, `FusedAdamWeightDecay` and `FP32StateAdamWeightDecay` (and the lower-case
aliases of `core/optim/build_optim.py`: `adamw`, `fused_adamw`, `fp32_adamw`) all become
`torch.optim.AdamW` (decoupled weight decay, bias-corrected moments, fp32 states for fp32 weights),
using the fused kernel where the parameters allow it and the foreach one otherwise. The
`beta1`/`beta2` arguments of the `AdamWeightDecay` family and the `betas` pair of `AdamW` are both
accepted. MindSpore's `AdamWeightDecay` has no bias correction; `torch.optim.AdamW` has.

`FP32StateAdamWeightDecay` is MindFormers' optimizer for low-precision weights (`param_init_type:
bfloat16`): the moments stay in fp32 whatever the weights' dtype; MindFormers' `AdamW` does the same
(its `clone_state` makes float32 moments), `FusedAdamWeightDecay` keeps them in the weights' dtype. Here
both also keep an fp32 master copy of each bf16/fp16 weight (the usual mixed-precision recipe, as
Megatron's `main_params`): the update runs on the master with the gradient cast to fp32, and the weight
the model computes with is refreshed from the master after every step, so updates smaller than a bf16
ulp are not lost. The
masters and fp32 moments are optimizer state (`optim_master.<name>`, `adam_m.<name>`, ... in training
checkpoints) and survive save / resume unrounded.

Weight-decay groups follow `mindformers/core/optim/optimizer_grouped_parameters.py`: parameters of
one dimension and names ending in `.bias` get no decay; a model with `no_weight_decay()` /
`no_weight_decay_keywords()` names the skipped ones itself.
"""

from __future__ import annotations

import torch
from torch import nn

from torchformers.tools.logger import logger
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.config import ConfigError

__all__ = ["AdamW", "FP32StateAdamWeightDecay", "FusedAdamWeightDecay", "get_optimizer_grouped_parameters"]


def get_optimizer_grouped_parameters(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """`[{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]` of trainable params."""
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    skip_keywords = tuple(model.no_weight_decay_keywords()) if hasattr(model, "no_weight_decay_keywords") else ()
    groups: dict[str, dict] = {}
    names: dict[str, list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if skip_names or skip_keywords:
            no_decay = name in skip_names or any(k in name for k in skip_keywords)
        else:
            no_decay = param.ndim == 1 or name.endswith(".bias")
        key = "no_decay" if no_decay else "decay"
        group = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else float(weight_decay)})
        group["params"].append(param)
        names.setdefault(key, []).append(name)
    if not groups:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    logger.debug("param groups: %s", {k: len(v) for k, v in names.items()})
    return list(groups.values())


def _fused_ok(params: list) -> bool:
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return (
        all(
            isinstance(p, torch.Tensor)
            and p.device.type in ("cpu", "cuda")
            and p.dtype in (torch.float32, torch.bfloat16)
            for p in tensors
        )
        and len({p.device.type for p in tensors}) == 1
    )


class _TorchAdamW(torch.optim.AdamW):
    """MindFormers' Adam arguments (`learning_rate`, `betas` or `beta1`/`beta2`, ...) on `torch.optim.AdamW`.

    `learning_rate` may be a number or an LR schedule (a callable of the step); with a schedule the
    initial rate is the schedule's rate at step 0 and `lr_schedule` is kept for the trainer to apply.
    """

    def __init__(
        self,
        params,
        learning_rate=1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        beta1: float | None = None,
        beta2: float | None = None,
        use_fused: bool | None = None,
        amsgrad: bool = False,
        maximize: bool = False,
        **ignored,
    ) -> None:
        name = type(self).__name__
        ignored.pop("type", None)
        for key in ("swap", "offload", "clip"):  # MindSpore memory options with no PyTorch meaning here
            ignored.pop(key, None)
        if ignored:
            raise ConfigError(f"optimizer {name}: unknown arguments {sorted(ignored)}")
        b1, b2 = (list(betas) + [None, None])[:2] if betas is not None else (0.9, 0.999)
        b1 = float(beta1 if beta1 is not None else b1)
        b2 = float(beta2 if beta2 is not None else b2)
        for key, value in (("beta1", b1), ("beta2", b2)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"optimizer {name}: {key} must lie in [0, 1), got {value}")
        self.lr_schedule = learning_rate if callable(learning_rate) else None
        # with a schedule the loop sets each step's rate; its peak rate is the initial group value
        lr = float(getattr(learning_rate, "learning_rate", 0.0) if callable(learning_rate) else learning_rate)
        params = list(params)
        fused = _fused_ok(params) if use_fused in (None, True) else False
        super().__init__(
            params,
            lr=lr,
            betas=(b1, b2),
            eps=float(eps),
            weight_decay=float(weight_decay),
            amsgrad=amsgrad,
            maximize=maximize,
            fused=fused or None,
            foreach=None if fused else True,
        )


class _FP32State:
    """fp32 moments and fp32 master weights for bf16/fp16 weights (mixed into a `_TorchAdamW`).

    For fp32 weights nothing changes. For a low-precision weight `p` the state holds `master` (fp32),
    `exp_avg` and `exp_avg_sq` (fp32); each step updates the master from `p.grad.float()` with torch's
    AdamW kernel and copies the master back into `p`. Weights loaded into the model after the first step
    are not seen by the masters: load them before training.
    """

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):
        # torch gathers the group's tensors and creates missing state in the weights' dtype; the
        # low-precision entries are then swapped for their fp32 master / fp32 state before the kernel runs
        has_complex = super()._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        for i, p in enumerate(params):
            if p.dtype == torch.float32 or not p.is_floating_point():
                continue
            state = self.state[p]
            if "master" not in state:
                state["master"] = p.detach().float()
            for key, values in (
                ("exp_avg", exp_avgs),
                ("exp_avg_sq", exp_avg_sqs),
                ("max_exp_avg_sq", max_exp_avg_sqs),
            ):
                if key in state:
                    state[key] = state[key].float()
                    values[i] = state[key]
            params[i], grads[i] = state["master"], grads[i].float()
            self._refresh.append((p, state["master"]))
        return has_complex

    @torch.no_grad()
    def step(self, closure=None):
        self._refresh: list[tuple[torch.Tensor, torch.Tensor]] = []
        loss = super().step(closure)
        if self._refresh:
            weights, masters = zip(*self._refresh)
            torch._foreach_copy_(list(weights), list(masters))  # rounds each fp32 master to the weight's dtype
        self._refresh = []
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts loaded state to each weight's dtype; masters and moments are put back in fp32."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                    self.state[p][key] = value.to(p.device, copy=True)


class AdamW(_FP32State, _TorchAdamW):
    """MindFormers' `AdamW(params, learning_rate, betas, eps, weight_decay, ...)`.

    Its moments are fp32 whatever the weights' dtype (MindFormers `core/optim/adamw.py` clones them as
    float32), so bf16/fp16 weights get fp32 moments (and an fp32 master, see `_FP32State`): moments in
    float16 underflow (`eps` 1e-8 and squared gradients below 6e-8 become 0) and the update turns inf/NaN.
    """


class FusedAdamWeightDecay(_TorchAdamW):
    """MindFormers' `FusedAdamWeightDecay(params, learning_rate, beta1, beta2, eps=1e-6, weight_decay)`."""

    def __init__(self, params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, **kwargs):
        super().__init__(params, learning_rate, None, eps, weight_decay, beta1=beta1, beta2=beta2, **kwargs)


class FP32StateAdamWeightDecay(_FP32State, FusedAdamWeightDecay):
    """MindFormers' `FP32StateAdamWeightDecay`: `FusedAdamWeightDecay` with fp32 moments and fp32 master
    weights for bf16/fp16 weights (`_FP32State`)."""


for _cls, _aliases in (
    (AdamW, ()),
    (FusedAdamWeightDecay, ("fused_adamw",)),
    (FP32StateAdamWeightDecay, ("fp32_adamw",)),
):
    MindFormerRegister.register_cls(_cls, MindFormerModuleType.OPTIMIZER)
    for _alias in _aliases:
        MindFormerRegister.register_cls(_cls, MindFormerModuleType.OPTIMIZER, alias=_alias)
# `adamw` is MindSpore's nn.AdamWeightDecay in MindFormers; the same torch AdamW here.
MindFormerRegister.register_cls(FusedAdamWeightDecay, MindFormerModuleType.OPTIMIZER, alias="adamw")
