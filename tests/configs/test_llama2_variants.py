"""The Llama 2 YAMLs named after MindFormers 1.3.2's LoRA and bfloat16 variants launch, shrunk on the
command line as `test_mindformers_yamls.py` shrinks MindFormers' own, and keep what makes them variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.configs.test_mindformers_yamls import finetune_parquet, launch_argv, tiny_weights  # noqa: F401
from tests.trainer.conftest import wiki_bytes  # noqa: F401  (a fixture)
from torchformers.tools.register.config import load_yaml

REPO = Path(__file__).resolve().parents[2]
VARIANTS = [
    "lora_llama2_7b.yaml",
    "lora_llama2_13b.yaml",
    "finetune_llama2_7b_bf16.yaml",
    "finetune_llama2_13b_bf16.yaml",
    "finetune_llama2_70b_bf16_32p.yaml",
    "finetune_llama2_70b_bf16_64p.yaml",
    "pretrain_llama2_7b_bf16.yaml",
    "pretrain_llama2_13b_bf16.yaml",
    "pretrain_llama2_70b_bf16_32p.yaml",
    "pretrain_llama2_70b_bf16_64p.yaml",
]
FAST = {"lora_llama2_7b.yaml", "pretrain_llama2_7b_bf16.yaml"}  # the others: -m slow


def test_variants_are_what_their_names_say():
    for name in VARIANTS:
        model = load_yaml(REPO / "configs" / "llama2" / name)["model"]["model_config"]
        if name.startswith("lora_"):
            assert model["pet_config"]["pet_type"] == "lora" and model["param_init_type"] == "float32"
        else:
            assert model["param_init_type"] == "bfloat16" and "pet_config" not in model
    parallel = load_yaml(REPO / "configs" / "llama2" / "pretrain_llama2_70b_bf16_32p.yaml")["parallel_config"]
    assert parallel["data_parallel"] * parallel["model_parallel"] * parallel["pipeline_stage"] == 32


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS])
def test_variant_launches(name, tmp_path, finetune_parquet, tiny_weights, monkeypatch):  # noqa: F811
    from torchformers.checkpoint.loader import read_weights
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = launch_argv(REPO / "configs" / "llama2" / name, out, finetune_parquet, tiny_weights,
                       fetch("llama2/tokenizer.model"))  # fmt: skip
    assert main(argv) == 0
    assert (out / "metrics.jsonl").is_file()
    (weights,) = (out / "checkpoint_network" / "rank_0").iterdir()
    state = read_weights(weights)
    if name.startswith("lora_"):
        assert any("lora_a" in k.lower() for k in state), sorted(state)[:5]
        assert (out / "checkpoint_trainable" / "rank_0").is_dir()
    else:
        assert state["model.norm_out.weight"].dtype == torch.bfloat16
