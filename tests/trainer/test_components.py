"""LR schedules, optimizer names and weight-decay groups, loss scaling, activation checkpointing."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn


def test_lr_schedules_follow_warmup_ratio_and_total_steps():
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
    from torchformers.tools.register.build import build_lr

    lr = build_lr({"type": "CosineWithWarmUpLR", "learning_rate": 1.0, "lr_end": 0.1, "warmup_ratio": 0.1,
                   "total_steps": -1})  # fmt: skip
    lr.resolve_total_steps(100)
    assert lr.warmup_steps == 10
    assert lr(0) == 0.0 and math.isclose(lr(5), 0.5) and lr(10) == 1.0
    assert math.isclose(lr(55), 0.1 + 0.9 * 0.5) and math.isclose(lr(100), 0.1)
    linear = build_lr({"type": "linear", "learning_rate": 2.0, "warmup_steps": 2, "total_steps": 12})
    assert linear(2) == 2.0 and math.isclose(linear(7), 1.0) and linear(12) == 0.0
    poly = build_lr({"type": "PolynomialWithWarmUpLR", "learning_rate": 1.0, "total_steps": 10, "power": 2.0,
                     "lr_end": 0.0})  # fmt: skip
    assert math.isclose(poly(5), 0.25)
    const = build_lr({"type": "ConstantWarmUpLR", "learning_rate": 3.0, "warmup_steps": 4})
    assert const(2) == 1.5 and const(1000) == 3.0
    restarts = build_lr({"type": "CosineWithRestartsAndWarmUpLR", "learning_rate": 1.0, "total_steps": 20,
                         "num_cycles": 2})  # fmt: skip
    assert restarts(0) == 1.0 and math.isclose(restarts(10), 1.0) and restarts(5) < 0.6
    for alias in ("cosine", "linear", "polynomial", "constant_with_warmup", "cosine_with_restarts"):
        assert MindFormerRegister.is_exist(MindFormerModuleType.LR, alias)
    with pytest.raises(ValueError, match="warmup_ratio .* must lie in"):
        build_lr({"type": "CosineWithWarmUpLR", "learning_rate": 1.0, "warmup_ratio": 3})


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


@pytest.mark.parametrize("name", ["AdamW", "FusedAdamWeightDecay", "FP32StateAdamWeightDecay", "adamw", "fp32_adamw"])
def test_optimizer_names_build_torch_adamw_with_mindformers_decay_groups(name):
    from torchformers.tools.register.build import build_optim
    from torchformers.trainer.optimizer import get_optimizer_grouped_parameters

    model = Tiny()
    groups = get_optimizer_grouped_parameters(model, 0.1)
    decay = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decay == {id(model.emb.weight), id(model.proj.weight)}  # bias and 1-D norm weights: no decay
    opt = build_optim({"type": name, "learning_rate": 1e-3, "beta1": 0.8, "eps": 1e-6}, default_args={"params": groups})
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"][0] == 0.8 and opt.defaults["fused"] in (True, None)


def test_fp16_compute_uses_dynamic_loss_scale_and_bf16_skips_it():
    from torchformers.trainer.wrapper import MFTrainOneStepCell

    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sense = {"type": "DynamicLossScaleUpdateCell", "loss_scale_value": 1024, "scale_factor": 2, "scale_window": 5}
    cell = MFTrainOneStepCell(model, opt, scale_sense=sense, compute_dtype=torch.float16)
    assert cell.scaler is not None and cell.scaler.get_scale() == 1024.0
    assert MFTrainOneStepCell(model, opt, scale_sense=sense, compute_dtype=torch.bfloat16).scaler is None
    fixed = MFTrainOneStepCell(model, opt, scale_sense=128, compute_dtype=torch.float16)
    assert fixed.fixed_scale == 128.0


def test_activation_checkpointing_keeps_names_and_gradients():
    from torchformers.trainer import apply_activation_checkpointing

    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2)])
    x = torch.randn(3, 8)

    def loss_of(m):
        h = x
        for layer in m.layers:
            h = layer(h)
        return h.pow(2).sum()

    loss_of(model).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    names = [n for n, _ in model.named_parameters()]
    assert apply_activation_checkpointing(model, layers="layers") == 2  # a model of no registered family
    loss_of(model).backward()
    assert [n for n, _ in model.named_parameters()] == names
    assert all(torch.allclose(a, p.grad) for a, p in zip(ref, model.parameters()))
    del layers


def test_flops_per_token_counts_weight_gradients_only_for_trained_weights():
    """MFU's FLOP count: 6 per matmul weight in full training; a frozen weight needs no gradient of its
    own (4), the LoRA adapters train (6); attention adds 6 x layers x hidden x seq either way."""
    from torchformers.models import LlamaConfig, LlamaForCausalLM
    from torchformers.pet import get_pet_model
    from torchformers.trainer.train_loop import flops_per_token

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seq_length=16)
    model = LlamaForCausalLM(cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n = sum({id(m.weight): m.weight.numel() for m in linears}.values())
    attention = 6 * cfg.num_layers * cfg.hidden_size * cfg.seq_length
    assert flops_per_token(model) == 6 * n + attention
    get_pet_model(model, {"pet_type": "lora", "lora_rank": 4, "target_modules": r".*\.(wq|wv)"})
    adapters = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad)
    assert adapters == cfg.num_layers * 2 * 4 * (32 + 32)  # rank 4 on two 32x32 projections per layer
    assert flops_per_token(model) == 4 * n + 6 * adapters + attention


def test_evaluation_needs_the_models_compute_loss():
    from torchformers.errors import ConfigError
    from torchformers.trainer import evaluate_loss

    with pytest.raises(ConfigError, match="Linear has none"):
        evaluate_loss(nn.Linear(2, 2), [], torch.device("cpu"))


def test_run_context_lives_below_the_trainer():
    from torchformers.parallel import context as lower
    from torchformers.tools import context as mindformers_path

    assert mindformers_path.build_context is lower.build_context
    assert mindformers_path.resolve_device("CPU") == torch.device("cpu")


def test_train_state_weights_leave_the_optimizer_out(tmp_path):
    from torchformers.errors import CheckpointError
    from torchformers.trainer.checkpointing import (
        is_train_state_file,
        load_train_state,
        save_train_state,
        weights_of_train_state,
    )

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "t_rank_0-1_1.safetensors"
    save_train_state(path, model, optimizer, {"step_num": 1})
    assert is_train_state_file(path) and not is_train_state_file(tmp_path / "other.safetensors")
    tensors = {"0.weight": torch.zeros(1), "adam_m.0.weight": torch.zeros(1), "optim_foo.0.weight": torch.zeros(1)}
    assert list(weights_of_train_state(tensors)) == ["0.weight"]
    assert load_train_state(path, nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), None)["step_num"] == 1
    with pytest.raises(CheckpointError, match="with a different shape"):
        load_train_state(path, nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)), None)


def test_resume_checkpoint_from_load_checkpoint_follows_mindformers_layout(tmp_path):
    from torchformers.errors import ConfigError
    from torchformers.trainer.checkpointing import resume_checkpoint_from

    rank0 = tmp_path / "checkpoint" / "rank_0"
    rank0.mkdir(parents=True)
    older, newer = rank0 / "m_rank_0-1_2.ckpt", rank0 / "m_rank_0-1_4.ckpt"
    older.write_bytes(b"x")
    newer.write_bytes(b"x")
    (rank0 / ".m_rank_0-1_6.tmp99.ckpt").write_bytes(b"x")  # an unfinished write is never picked
    os.utime(older, (1, 1))
    assert resume_checkpoint_from(tmp_path / "checkpoint", True) == newer  # no meta.json: the newest file
    (rank0 / "meta.json").write_text('{"last_ckpt_file": "m_rank_0-1_2.ckpt"}')
    assert resume_checkpoint_from(tmp_path / "checkpoint", True) == older  # meta.json names the last one
    assert resume_checkpoint_from(rank0, True) == older  # the rank folder itself
    assert resume_checkpoint_from(newer, True) == newer  # a file
    assert resume_checkpoint_from(tmp_path / "checkpoint", "m_rank_0-1_4.ckpt") == newer  # a name
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        resume_checkpoint_from(tmp_path / "checkpoint", "m_rank_0-9_9.ckpt")
    with pytest.raises(ConfigError, match="no such file or folder"):
        resume_checkpoint_from(tmp_path / "missing", True)
    with pytest.raises(ConfigError, match=r"rank_1.*no \.ckpt|no \.ckpt.*rank_1"):
        (tmp_path / "checkpoint" / "rank_1").mkdir()
        resume_checkpoint_from(tmp_path / "checkpoint", True, rank=1)


def test_loss_scale_resumes_from_mindspore_loss_scale_cell_scalars():
    """fp16 runs: `loss_scale` and the DynamicLossScaleUpdateCell counters of a MindFormers file set the scaler
    (scale, and the clean steps since the last overflow, after which the scale grows)."""
    from types import SimpleNamespace

    from torchformers.trainer.train_loop import TrainLoop

    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0, growth_interval=1000)
    info = {"loss_scale": 1024.0, "current_iterator_step": 11, "last_overflow_iterator_step": 7}
    TrainLoop._restore_loss_scale(SimpleNamespace(step_fn=SimpleNamespace(scaler=scaler)), info)
    assert scaler.get_scale() == 1024.0
    assert scaler.state_dict()["_growth_tracker"] == 3  # steps 8, 9 and 10 were clean


def test_resume_position_follows_step_num_as_mindformers():
    """`step_num` counts steps since the start; scaled by old / new global batch size when that changed."""
    from types import SimpleNamespace

    from torchformers.trainer.train_loop import TrainLoop

    def position(info, global_batch_size=4, steps_per_epoch=4):
        ctx = SimpleNamespace(steps_per_epoch=steps_per_epoch)
        loop = SimpleNamespace(global_batch_size=global_batch_size, ctx=ctx)
        return TrainLoop._resume_position(loop, info)

    assert position({"step_num": 3, "epoch_num": 1}) == (0, 3)
    assert position({"step_num": 4, "epoch_num": 1}) == (1, 0)  # the end of epoch 1: epoch 2 from its start
    assert position({"step_num": 6, "epoch_num": 2}) == (1, 2)
    assert position({"step_num": 6, "epoch_num": 2, "global_batch_size": 4}, global_batch_size=8) == (0, 3)
