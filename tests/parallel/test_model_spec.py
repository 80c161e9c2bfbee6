"""The parallel code applies the model's `ModelSpec` (one process, no process group): pipeline stages cut at
the spec's layers run the model's own forward and loss, the tensor-parallel plan comes from `tp_plan`, and
a model of no registered family is refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchformers.errors import ConfigError, TrainingError
from torchformers.models.llama.llama import LlamaForCausalLM
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.parallel import apply_activation_checkpointing
from torchformers.parallel.pipeline_parallel import split_into_stage, stage_module
from torchformers.parallel.tensor_parallel import apply_tensor_parallel, check_tp_divisibility, layer_plan

REPO = Path(__file__).resolve().parents[2]


def _tiny(**kw) -> LlamaForCausalLM:
    values = {"vocab_size": 64, "hidden_size": 32, "num_layers": 3, "num_heads": 4, "n_kv_heads": 2,
              "intermediate_size": 64, "seq_length": 16, "compute_dtype": "float32", "param_init_type": "float32",
              "tie_word_embeddings": False, **kw}  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**values))


class _NoFamily(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4)])


def test_a_model_of_no_registered_family_is_refused_by_class_name():
    model = _NoFamily()
    for apply in (apply_activation_checkpointing, lambda m: split_into_stage(m, 0, 2),
                  lambda m: apply_tensor_parallel(m, None)):  # fmt: skip
        with pytest.raises(ConfigError, match="_NoFamily belongs to no registered model family"):
            apply(model)


def test_stages_cut_at_the_spec_layers_run_the_models_forward_and_loss():
    full = _tiny()
    ids = torch.randint(1, 64, (2, 9))
    ids[0, -3:] = 0  # padding: no loss is taken there
    want = full.compute_loss(ids, reduction="sum")
    stages = [_tiny(), _tiny()]
    for stage in stages:
        stage.load_state_dict(full.state_dict())
    assert split_into_stage(stages[0], 0, 2) == [0, 1] and split_into_stage(stages[1], 1, 2) == [2]
    first, last = (dict(s.named_parameters()) for s in stages)
    # every parameter keeps its full name, each on exactly one stage
    assert sorted([*first, *last]) == sorted(n for n, _ in full.named_parameters())
    assert "lm_head.weight" in last and "model.layers.2.ffn_norm.weight" in last
    assert "model.tok_embeddings.embedding_weight" in first and "model.norm_out.weight" not in first
    tokens, targets = stages[1].loss_inputs(ids)
    hidden = stage_module(stages[1])(stage_module(stages[0])(tokens))
    torch.testing.assert_close(stages[1].loss_from_hidden(hidden, targets, "sum"), want)


def test_pipeline_stages_need_untied_embeddings_and_enough_layers():
    with pytest.raises(ConfigError, match="tie_word_embeddings must be False"):
        split_into_stage(_tiny(tie_word_embeddings=True), 0, 2)
    with pytest.raises(ConfigError, match=r"pipeline_stage \(4\) exceeds model_config.num_layers \(3\)"):
        split_into_stage(_tiny(), 0, 4)


def test_tensor_parallel_plan_comes_from_the_spec():
    from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel

    from torchformers.parallel.tensor_parallel import ReplicateParallel
    from torchformers.tools.register import MindFormerRegister

    model = _tiny()
    spec = MindFormerRegister.model_spec_of(model).parallel
    layer = model.model.layers[0]
    plain = layer_plan(spec.tp_plan, False, layer)
    kinds = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel, "norm": ReplicateParallel}
    assert {path: type(style) for path, style in plain.items()} == {p: kinds[k] for p, k in spec.tp_plan.items()}
    sp = layer_plan(spec.tp_plan, True, layer)
    assert {type(sp[p]) for p, k in spec.tp_plan.items() if k == "norm"} == {SequenceParallel}
    # the modules holding split linears gather their hidden-state input over the sequence, and only it
    parents = {p: s for p, s in sp.items() if isinstance(s, PrepareModuleInput)}
    assert sorted(parents) == ["attention", "feed_forward"]
    assert [len(parents[p].input_layouts) for p in sorted(parents)] == [5, 1]
    assert all(layout is None for layout in parents["attention"].input_layouts[1:])
    with pytest.raises(ConfigError, match=r"tp_plan\['x'\] is 'diagonal'"):
        layer_plan({"x": "diagonal"}, False, layer)


def test_divisibility_is_checked_on_the_spec_keys():
    config = _tiny().config
    check_tp_divisibility(config, 2, True, keys=("num_heads", "kv_heads", "ffn_hidden_size"))
    with pytest.raises(ConfigError, match="model_config.kv_heads is 2, which does not split evenly over 4 ranks"):
        check_tp_divisibility(config, 4, False, keys=("num_heads", "kv_heads"))


def test_activation_checkpointing_wraps_exactly_the_spec_layers():
    model = _tiny()
    ids = torch.randint(1, 64, (2, 9))
    want = model.compute_loss(ids)
    assert apply_activation_checkpointing(model) == 3
    torch.testing.assert_close(model.compute_loss(ids), want)


def test_non_finite_loss_is_a_training_error():
    from torchformers.trainer import NonFiniteLossError

    assert issubclass(NonFiniteLossError, TrainingError) and issubclass(NonFiniteLossError, RuntimeError)


_BUILD = """
import os, torch, torch.distributed as dist
from torchformers.parallel import ParallelDims, build_parallel_model
dist.init_process_group("gloo", rank=0, world_size=1)
config = {"model_config": {"type": "LlamaConfig", "vocab_size": 64, "hidden_size": 32, "num_layers": 2,
          "num_heads": 4, "intermediate_size": 64, "seq_length": 16, "compute_dtype": "float32",
          "param_init_type": "float32"}, "arch": {"type": "LlamaForCausalLM"}}
model, plan = build_parallel_model(config, ParallelDims(world_size=1), torch.device("cpu"))
norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight") or n.endswith("norm_out.weight")]
assert len(norms) == 5 and all(bool((p == 1).all()) for p in norms), norms
assert all(bool(p.isfinite().all()) and p.device.type == "cpu" for p in model.parameters())
std = float(model.model.layers[0].attention.wq.weight.std())
assert 0.5 * model.config.init_method_std < std < 2 * model.config.init_method_std, std
assert plan.layer_ids == [0, 1] and plan.writes_weights
dist.destroy_process_group()
print("ok")
"""


def test_build_parallel_model_initialises_through_the_model(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    from tests.parallel.test_parallel import _free_port

    env["MASTER_PORT"] = str(_free_port())
    proc = subprocess.run([sys.executable, "-c", _BUILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-2000:]
