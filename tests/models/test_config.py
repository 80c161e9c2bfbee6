"""`PretrainedConfig` / `LlamaConfig`: defaults, FFN formula, YAML and JSON round trips, HF config.json."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from torchformers.models import LlamaConfig, PretrainedConfig
from torchformers.models.configuration_utils import ConfigError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister


def test_registered_and_defaults():
    assert MindFormerRegister.get_cls(MindFormerModuleType.CONFIG, "LlamaConfig") is LlamaConfig
    c = LlamaConfig()
    assert (c.seq_length, c.hidden_size, c.num_layers, c.num_heads, c.vocab_size) == (2048, 4096, 32, 32, 32000)
    assert c.compute_dtype is torch.float16 and c.layernorm_compute_type is torch.float32
    assert c.max_position_embedding == 2048 and c.extend_method == "None" and c.top_k == 5 and c.do_sample is True


def test_ffn_size_formula():
    assert LlamaConfig().ffn_hidden_size == 11008  # Llama 2 7B
    assert LlamaConfig(hidden_size=4096, ffn_dim_multiplier=1.3, multiple_of=1024).ffn_hidden_size == 14336  # 3 8B
    assert LlamaConfig(intermediate_size=1234).ffn_hidden_size == 1234


def test_unknown_kwargs_aliases_and_dtypes():
    c = LlamaConfig(compute_dtype="bfloat16", param_init_type="float32", my_custom_flag=3)
    assert c.my_custom_flag == 3
    assert c.compute_dtype is torch.bfloat16 and c.param_init_type is torch.float32
    assert c.num_hidden_layers == c.num_layers == 32
    c.num_attention_heads = 8
    assert c.num_heads == 8
    with pytest.raises(ConfigError, match="compute_dtype.*'float64'"):
        LlamaConfig(compute_dtype="float64")
    with pytest.raises(ConfigError, match="extend_method"):
        LlamaConfig(extend_method="ROPE2")
    with pytest.raises(ConfigError, match="scaling_factor"):
        LlamaConfig(extend_method="LLAMA3", scaling_factor=8.0)


def test_json_round_trip(tmp_path):
    c = LlamaConfig(num_layers=3, hidden_size=128, num_heads=4, n_kv_heads=2, compute_dtype="float32", extra=[1, 2])
    c.to_json_file(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["num_layers"] == 3 and data["compute_dtype"] == "float32" and "vocab_size" not in data  # diff only
    again = LlamaConfig.from_json_file(tmp_path / "c.json")
    assert again == c and again.extra == [1, 2]


def test_yaml_round_trip_mindformers_layout(tmp_path):
    c = LlamaConfig(num_layers=2, hidden_size=64, num_heads=4, seq_length=128, param_init_type="float32",
                    extend_method="LLAMA3", scaling_factor={"factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64})  # fmt: skip
    c.save_pretrained(tmp_path, save_name="llama_tiny", save_json=False, arch="LlamaForCausalLM")
    data = yaml.safe_load((tmp_path / "llama_tiny.yaml").read_text())
    assert data["model"]["model_config"]["type"] == "LlamaConfig"
    assert data["model"]["arch"]["type"] == "LlamaForCausalLM"
    again = LlamaConfig.from_pretrained(tmp_path / "llama_tiny.yaml")
    assert again.scaling_factor == c.scaling_factor and again.param_init_type is torch.float32
    assert again.num_layers == 2 and again.architectures == ["LlamaForCausalLM"]


def test_reads_a_mindformers_predict_yaml(tmp_path):
    text = """
model:
  model_config:
    type: LlamaConfig
    batch_size: 1
    seq_length: 8192
    hidden_size: 4096
    num_layers: 32
    num_heads: 32
    n_kv_heads: 8
    vocab_size: 128256
    multiple_of: 1024
    ffn_dim_multiplier: 1.3
    rms_norm_eps: 1.0e-5
    bos_token_id: 128000
    eos_token_id: 128001
    pad_token_id: 128002
    compute_dtype: "bfloat16"
    theta: 500000
    extend_method: "LLAMA3"
    scaling_factor: {factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192}
    use_past: True
    block_size: 16
    is_dynamic: True
  arch:
    type: LlamaForCausalLM
"""
    (tmp_path / "predict.yaml").write_text(text)
    c = LlamaConfig.from_pretrained(tmp_path / "predict.yaml")
    assert c.ffn_hidden_size == 14336 and c.kv_heads == 8 and c.compute_dtype is torch.bfloat16
    assert c.theta == 500000.0 and c.use_past is True and c.is_dynamic is True


def test_reads_hugging_face_config_json(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True,
        head_dim=64, eos_token_id=[7, 9],
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip
    hf.save_pretrained(tmp_path)
    c = LlamaConfig.from_pretrained(tmp_path)
    assert (c.num_layers, c.num_heads, c.n_kv_heads, c.head_dim, c.intermediate_size) == (3, 8, 2, 64, 512)
    assert c.max_position_embedding == 4096 and c.tie_word_embeddings is True and c.theta == 500000.0
    assert c.extend_method == "LLAMA3" and c.scaling_factor["factor"] == 32.0
    assert c.eos_token_ids == [7, 9] and c.compute_dtype is torch.float32


def test_base_config_accepts_anything():
    c = PretrainedConfig(name_or_path="x", foo=1, architectures=["A"])
    assert c.foo == 1 and c.name_or_path == "x" and c.to_dict()["architectures"] == ["A"]
    with pytest.raises(ConfigError, match="does not exist"):
        LlamaConfig.from_pretrained("/nonexistent/config.yaml")
