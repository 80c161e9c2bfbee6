"""`FP32StateAdamWeightDecay` on bf16 weights: fp32 master weights and moments, saved and resumed exactly.

Reference: torch's AdamW on an fp32 copy of the weights fed the same (bf16) gradients. The bf16 model
must hold the rounding of that fp32 trajectory, and a run stopped and resumed through the training
checkpoint must continue bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from torchformers.trainer.checkpointing import load_train_state, save_train_state
from torchformers.trainer.optimizer import FP32StateAdamWeightDecay, get_optimizer_grouped_parameters


def tiny(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)).to(dtype)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g)
        dtype = next(model.parameters()).dtype
        loss = ((model(x.to(dtype)).float() - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def make_opt(model: nn.Module, lr: float = 1e-2) -> FP32StateAdamWeightDecay:
    return FP32StateAdamWeightDecay(get_optimizer_grouped_parameters(model, 0.1), learning_rate=lr, eps=1e-8)


def test_bf16_weights_follow_fp32_masters_updated_like_fp32_adamw():
    model = tiny(torch.bfloat16)
    opt = make_opt(model)
    reference = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    ref_groups = [
        {"params": [reference[i] for i, p in enumerate(model.parameters()) if any(p is q for q in g["params"])],
         "weight_decay": g["weight_decay"]}
        for g in opt.param_groups
    ]  # fmt: skip
    ref_opt = torch.optim.AdamW(ref_groups, lr=1e-2, eps=1e-8, fused=True)
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g)
        ((model(x.bfloat16()).float() - y) ** 2).mean().backward()
        for p, r in zip(model.parameters(), reference):
            r.grad = p.grad.float()
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
        for p, r in zip(model.parameters(), reference):
            state = opt.state[p]
            assert state["master"].dtype == state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
            assert torch.equal(state["master"], r.detach())  # the fp32 trajectory, not a bf16 one
            assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), r.detach().bfloat16())


def test_updates_below_bf16_resolution_accumulate_in_the_master():
    model = nn.Linear(4, 4, bias=False).bfloat16()
    with torch.no_grad():
        model.weight.fill_(1.0)  # bf16 spacing just below 1.0 is 2**-8; each step moves it by ~1.1e-3
    opt = make_opt(model, lr=1e-3)
    for _ in range(10):
        model.weight.grad = torch.ones_like(model.weight)
        opt.step()
    # plain bf16 AdamW would round every single step back to 1.0; the master has moved by ~10 * lr
    assert torch.allclose(opt.state[model.weight]["master"], torch.full((4, 4), 1.0 - 10e-3 - 1e-3), atol=1e-4)
    assert (model.weight < 1.0).all()


def test_resume_from_training_checkpoint_is_bit_exact(tmp_path):
    straight = tiny(torch.bfloat16)
    straight_opt = make_opt(straight)
    train(straight, straight_opt, range(4))

    first = tiny(torch.bfloat16)
    first_opt = make_opt(first)
    train(first, first_opt, range(2))
    path = tmp_path / "ckpt.safetensors"
    save_train_state(path, first, first_opt, {"step_num": 2})

    resumed = tiny(torch.bfloat16)
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # make sure the weights come from the checkpoint
    resumed_opt = make_opt(resumed)
    load_train_state(path, resumed, resumed_opt)
    for p in resumed.parameters():
        state = resumed_opt.state[p]
        assert state["master"].dtype == state["exp_avg"].dtype == torch.float32  # not rounded to bf16 on load
    train(resumed, resumed_opt, range(2, 4))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(straight_opt.state[a]["master"], resumed_opt.state[b]["master"])


def test_fp32_weights_keep_no_master_copy():
    model = tiny(torch.float32)
    opt = make_opt(model)
    train(model, opt, range(1))
    assert all("master" not in opt.state[p] for p in model.parameters())
