"""Prefix tuning and P-Tuning v2 from `pet_config`.

* MindFormers' own checkpoints (`fixtures/*.ckpt`, written by the real MindFormers' `get_pet_model` on a tiny
  Llama; `fixtures/make_prefix_fixtures.py`) load with no renaming and give MindFormers' logits.
* The forward and generation equal Hugging Face transformers' Llama given the same prefix as its past
  keys/values (a `DynamicCache`) with RoPE positions from 0: the prefix is attended, not rotated, and
  shifts no position.
* Finetuning trains only the prefix weights, lowers the loss, leaves the base untouched, and saves the
  prefix weights as the trainable checkpoint and as adapters that load back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.conftest import REPO, tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
PREFIX = {"pet_type": "prefixtuning", "prefix_token_num": 3, "mid_dim": 8, "dropout_rate": 0.1}
PTUNING2 = {"pet_type": "ptuning2", "pre_seq_len": 3, "prefix_projection": True, "projection_dim": 8,
            "dropout_prob": 0.1}  # fmt: skip
CONFIGS = {"prefixtuning": PREFIX, "ptuning2": PTUNING2}


def tiny_llama(**overrides):
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM

    values = dict(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seq_length=16,
                  compute_dtype="float32", param_init_type="float32", layernorm_compute_type="float32")  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(**{**values, **overrides}))


@pytest.mark.parametrize("pet_type", list(CONFIGS))
def test_mindformers_checkpoint_gives_mindformers_logits(pet_type):
    from torchformers.checkpoint.loader import load_state_into, read_weights
    from torchformers.pet import get_pet_model

    model = get_pet_model(tiny_llama(), CONFIGS[pet_type]).eval()
    state = read_weights(FIXTURES / f"{pet_type}.ckpt")
    stem = f"mindpet_delta_{pet_type}"
    assert {k for k in state if k.startswith(stem)} == {
        f"{stem}_prefix", f"{stem}_embedding.embedding_table", f"{stem}_trans.0.weight", f"{stem}_trans.0.bias",
        f"{stem}_trans.2.weight", f"{stem}_trans.2.bias",
    }  # fmt: skip
    report = load_state_into(model, state, source=pet_type)  # strict: nothing missing, unexpected or mis-shaped
    assert report.ok
    reference = np.load(FIXTURES / f"{pet_type}_logits.npz", allow_pickle=False)
    ids = torch.from_numpy(reference["input_ids"]).long()
    with torch.no_grad():
        logits = model(ids).numpy()
    # MindFormers computes the prefix encoder in float16: agreement to its rounding
    np.testing.assert_allclose(logits, reference["logits"], atol=3e-4, rtol=0)
    model._pet_prefix_hook.remove()  # the same weights without the prefix are far off: the prefix is exercised
    with torch.no_grad():
        assert np.abs(model(ids).numpy() - reference["logits"]).max() > 0.1


def prefix_pair(pet_config: dict, n_kv_heads: int):
    """transformers' Llama with random weights, and ours with the same weights plus a prefix method."""
    transformers = pytest.importorskip("transformers")
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
    from torchformers.pet import get_pet_model

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in name else torch.randn_like(p) * 0.15)
    ours = LlamaForCausalLM(LlamaConfig(**hf_config.to_dict())).eval()
    assert ours.load_checkpoint(hf.state_dict()).ok
    get_pet_model(ours, pet_config)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.startswith("mindpet_delta"):
                p.normal_(0.0, 0.5)
    return ours, hf


def hf_prefix_cache(ours, batch_size: int):
    """Our prefix keys/values as a transformers `DynamicCache` (the past every layer attends to)."""
    from transformers import DynamicCache

    prefix = ours._pet_prefix(batch_size, training=False)
    cache = DynamicCache()
    for i, (k, v) in enumerate(prefix):
        cache.update(k.clone(), v.clone(), i)
    return cache


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("pet_type", list(CONFIGS))
def test_forward_and_generation_equal_transformers_with_the_prefix_as_past(pet_type, n_kv_heads):
    ours, hf = prefix_pair(CONFIGS[pet_type], n_kv_heads)
    P = CONFIGS[pet_type].get("prefix_token_num") or CONFIGS[pet_type]["pre_seq_len"]
    ids = torch.randint(3, 96, (2, 12))
    with torch.no_grad():
        logits = ours(ids)
        expected = hf(
            ids, past_key_values=hf_prefix_cache(ours, 2), position_ids=torch.arange(12)[None].expand(2, -1),
            attention_mask=torch.ones(2, P + 12, dtype=torch.long),
        ).logits  # fmt: skip
    torch.testing.assert_close(logits, expected.float(), atol=2e-5, rtol=1e-5)

    # greedy generation through our KV cache, prompts of two lengths (left padding) against transformers
    # recomputing each prompt from the prefix alone
    prompts = [[5, 17, 33, 8, 61], [40, 9, 77]]
    for use_past in (True, False):
        out = ours.generate(prompts, max_new_tokens=8, do_sample=False, use_past=use_past)
        for prompt, got in zip(prompts, out):
            seq = list(prompt)
            for _ in range(8):
                x = torch.tensor([seq])
                with torch.no_grad():
                    step = hf(x, past_key_values=hf_prefix_cache(ours, 1), position_ids=torch.arange(len(seq))[None],
                              attention_mask=torch.ones(1, P + len(seq), dtype=torch.long)).logits  # fmt: skip
                seq.append(int(step[0, -1].argmax()))
            assert got.tolist() == seq, (use_past, prompt)


@pytest.mark.parametrize("pet_type", list(CONFIGS))
def test_finetune_trains_only_the_prefix_and_saves_it(pet_type, tmp_path, wiki_parquet):
    from torchformers.checkpoint.loader import read_weights
    from torchformers.pet import load_adapters
    from torchformers.tools.context import build_context
    from torchformers.trainer import CausalLanguageModelingTrainer

    yaml = REPO / "configs" / "tiny" / "finetune_llama_tiny.yaml"
    pet = {**CONFIGS[pet_type], **({"prefix_token_num": 4} if pet_type == "prefixtuning" else {"pre_seq_len": 4})}
    config = tiny_config(tmp_path, wiki_parquet, run_mode="finetune", yaml=yaml,
                         **{"load_checkpoint": "", "model.model_config.pet_config": pet,
                            "callbacks": [{"type": "CheckpointMonitor", "prefix": "pt", "save_checkpoint_steps": 25}],
                            "runner_config.stop_step": 25, "lr_schedule.learning_rate": 3e-2})  # fmt: skip
    build_context(config)
    trainer = CausalLanguageModelingTrainer()
    model = trainer.build_network(config)
    stem = f"mindpet_delta_{pet_type}"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{stem}_embedding.embedding_table", f"{stem}_trans.0.weight", f"{stem}_trans.0.bias",
                         f"{stem}_trans.2.weight", f"{stem}_trans.2.bias"}  # fmt: skip
    # a random base at its init scale gives near-uniform logits that no prefix can move: widen it (it stays frozen)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad and "norm" not in name:
                p.normal_(0.0, 0.15)
    base = {k: v.clone() for k, v in model.state_dict().items() if stem not in k}

    trainer.train(config=config, network=model)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in records[-5:]) / 5 < records[0]["loss"] - 0.3
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base model is frozen

    adapter = tmp_path / "adapter" / "adapter_model.safetensors"
    assert set(read_weights(adapter)) == trainable | {f"{stem}_prefix"}
    (saved,) = tmp_path.rglob("*trainable_params*")  # the CheckpointMonitor's trainable parameters: the prefix
    assert set(read_weights(saved)) == trainable
    fresh = CausalLanguageModelingTrainer()._bare(config)
    fresh.load_state_dict(base, strict=False)
    load_adapters(fresh, adapter)
    ids = torch.randint(1, 256, (2, 16))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), model(ids))


def test_config_errors_name_the_key():
    from torchformers.errors import ConfigError
    from torchformers.pet import get_pet_model

    with pytest.raises(ConfigError, match=r"pet_config: unknown keys \['pre_seq_len'\] for pet_type prefixtuning"):
        get_pet_model(tiny_llama(), {**PREFIX, "pre_seq_len": 4})
    with pytest.raises(ConfigError, match="pet_config.prefix_token_num must be a positive integer, got 0"):
        get_pet_model(tiny_llama(), {**PREFIX, "prefix_token_num": 0})
    with pytest.raises(ConfigError, match=r"pet_config.dropout_prob must lie in \[0, 1\), got 1.5"):
        get_pet_model(tiny_llama(), {**PTUNING2, "dropout_prob": 1.5})
    with pytest.raises(ConfigError, match="pet_type 'adapter' is not supported"):
        get_pet_model(tiny_llama(), {"pet_type": "adapter"})


def test_ptuning2_without_projection_learns_the_keys_directly():
    from torchformers.pet import get_pet_model

    model = get_pet_model(tiny_llama(), {"pet_type": "ptuning2", "pre_seq_len": 2, "prefix_projection": False})
    names = {n for n, _ in model.named_parameters() if n.startswith("mindpet_delta")}
    assert names == {"mindpet_delta_ptuning2_embedding.embedding_table"}
    table = model.mindpet_delta_ptuning2_embedding.embedding_table
    assert table.shape == (2, 2 * 2 * 64)  # (pre_seq_len, num_layers * 2 * kv_dim)
    prefix = model._pet_prefix(1, training=False)
    # layer 1's values are block 3 of each row, as MindFormers splits (bs, P, 2L, H) after (2, 0, 1, 3)
    torch.testing.assert_close(prefix[1][1][0].transpose(0, 1).reshape(2, 64), table[:, 3 * 64 : 4 * 64])


def test_build_network_loads_a_mindformers_prefix_checkpoint(tmp_path, wiki_parquet, caplog):
    """`load_checkpoint` holding the prefix weights (MindFormers' own file): the method is applied first, then
    everything loads, and the network gives MindFormers' logits."""
    from torchformers.trainer import CausalLanguageModelingTrainer

    model_config = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "n_kv_heads": 4,
                    "theta": 10000, "tie_word_embeddings": False, "seq_length": 16}  # fmt: skip
    overrides = {f"model.model_config.{k}": v for k, v in model_config.items()}
    config = tiny_config(
        tmp_path, wiki_parquet, run_mode="predict", yaml=REPO / "configs" / "tiny" / "finetune_llama_tiny.yaml",
        **{**overrides, "load_checkpoint": str(FIXTURES / "ptuning2.ckpt"), "model.model_config.pet_config": PTUNING2},
    )  # fmt: skip
    model = CausalLanguageModelingTrainer().build_network(config).eval()
    reference = np.load(FIXTURES / "ptuning2_logits.npz", allow_pickle=False)
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["input_ids"]).long()).numpy()
    np.testing.assert_allclose(logits, reference["logits"], atol=3e-4, rtol=0)

    # a checkpoint of the base model only: the prefix starts from its initialisation, and predict says so
    from torchformers.checkpoint import save_checkpoint

    base = tmp_path / "base.safetensors"
    save_checkpoint({k: v for k, v in model.state_dict().items() if "mindpet_delta" not in k}, str(base))
    config.load_checkpoint = str(base)
    with caplog.at_level("WARNING", logger="torchformers"):
        CausalLanguageModelingTrainer().build_network(config)
    assert any("the checkpoint holds no ptuning2 weights" in m for m in caplog.messages)


def test_freeze_patterns_are_mindpet_globs():
    from torchformers.pet import get_pet_model

    pet = {**PREFIX, "freeze_exclude": ["*attention_norm*"], "freeze_include": ["*trans.2*"]}
    model = get_pet_model(tiny_llama(), pet)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "mindpet_delta_prefixtuning_embedding.embedding_table", "mindpet_delta_prefixtuning_trans.0.weight",
        "mindpet_delta_prefixtuning_trans.0.bias", "model.layers.0.attention_norm.weight",
        "model.layers.1.attention_norm.weight",
    }  # fmt: skip


def test_prefix_with_tensor_or_pipeline_parallelism_is_refused_in_one_line():
    from torchformers.errors import ConfigError
    from torchformers.parallel.mesh import ParallelDims
    from torchformers.pet import get_pet_model
    from torchformers.trainer.base_trainer import BaseTrainer

    model = get_pet_model(tiny_llama(), PREFIX)
    with pytest.raises(ConfigError, match="prefixtuning runs data parallel only; parallel_config has model_parallel 2"):
        BaseTrainer._parallelise(model, None, ParallelDims(dp=1, tp=2, world_size=2), torch.device("cpu"), False)
