"""LoRA from `pet_config`: only adapters train, adapters save/load alone, merge = base + B·A·alpha/r."""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainer.conftest import REPO, tiny_config

LORA = {
    "pet_type": "lora",
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": ".*wq|.*wv|.*w2|lm_head",
}


def test_lora_finetune_trains_only_adapters_and_merge_matches(tmp_path, wiki_parquet):
    from torchformers.pet import LoRALinear, load_adapters, merge_lora, merge_lora_state_dict
    from torchformers.pet.lora import LORA_A, LORA_B
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    yaml = REPO / "configs" / "tiny" / "finetune_llama_tiny.yaml"
    config = tiny_config(tmp_path, wiki_parquet, run_mode="finetune", yaml=yaml,
                         **{"load_checkpoint": "", "model.model_config.pet_config": LORA, "callbacks": [],
                            "runner_config.stop_step": 25, "lr_schedule.learning_rate": 3e-2})  # fmt: skip
    build_context(config)
    trainer = CausalLanguageModelingTrainer()
    model = trainer.build_network(config)
    base = {k: v.clone() for k, v in model.state_dict().items() if LORA_A not in k and LORA_B not in k}
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 3 * 2 + 1 and all(n.endswith(("wq", "wv", "w2", "lm_head")) for n in wrapped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((LORA_A, LORA_B)) for n in trainable)

    trainer.train(config=config, network=model)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in records[-5:]) / 5 < records[0]["loss"] - 0.5
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # base weights untouched
    assert any(after[k].abs().sum() > 0 for k in after if k.endswith(LORA_B))  # B moved off zero

    adapter = tmp_path / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file()
    fresh = CausalLanguageModelingTrainer()._bare(config)
    fresh.load_state_dict(base, strict=False)
    load_adapters(fresh, adapter)
    ids = torch.randint(1, 256, (2, 16))
    model.eval(), fresh.eval()
    with torch.no_grad():
        reference = model(ids)
        assert torch.allclose(fresh(ids), reference, atol=1e-6)

    full_state = {k: v.clone() for k, v in model.state_dict().items()}
    merged_dict = merge_lora_state_dict(full_state, LORA)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    merged = model.state_dict()
    for name in wrapped:
        a, b = full_state[f"{name}.{LORA_A}"], full_state[f"{name}.{LORA_B}"]
        expected = base[f"{name}.weight"] + (b @ a) * (8 / 4)
        assert torch.allclose(merged[f"{name}.weight"], expected, atol=1e-6)
        assert torch.equal(merged_dict[f"{name}.weight"], merged[f"{name}.weight"])
    assert set(merged_dict) == set(merged)
    with torch.no_grad():
        assert torch.allclose(model(ids), reference, atol=1e-4)


def test_lora_config_errors_name_the_key(tmp_path, wiki_parquet):
    from torchformers.pet import get_pet_model
    from torchformers.tools.register.config import ConfigError
    from torchformers.trainer import CausalLanguageModelingTrainer

    model = CausalLanguageModelingTrainer()._bare(tiny_config(tmp_path, wiki_parquet))
    with pytest.raises(ConfigError, match="target_modules '.\\*nothing' matches no nn.Linear"):
        get_pet_model(model, {**LORA, "target_modules": ".*nothing"})
    with pytest.raises(ConfigError, match="pet_config: unknown keys \\['rank'\\]"):
        get_pet_model(model, {**LORA, "rank": 4})


def test_load_adapters_goes_through_the_one_loader(tmp_path):
    from torchformers.errors import CheckpointError, ConfigError
    from torchformers.pet import get_pet_model, load_adapters, save_adapters

    def net(width: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 2))

    config = {"pet_type": "lora", "lora_rank": 2, "target_modules": r"0$"}
    source = get_pet_model(net(4), config)
    path = save_adapters(source, tmp_path)
    target = get_pet_model(net(4), config)
    report = load_adapters(target, tmp_path)
    assert report.ok and report.source == str(path)
    assert torch.equal(target[0].mindpet_delta_lora_a, source[0].mindpet_delta_lora_a)
    with pytest.raises(CheckpointError, match="with a different shape"):
        load_adapters(get_pet_model(net(5), config), path)
    with pytest.raises(ConfigError, match="no adapters"):
        load_adapters(net(4), path)
