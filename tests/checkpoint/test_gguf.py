"""GGUF reading on the real SmolLM2-135M-Instruct Q4_1 file: dequantization, q/k un-permutation, names, config."""

import itertools

import numpy as np
import pytest
import torch

from torchformers.checkpoint import CheckpointError, gguf_to_native, load_checkpoint
from torchformers.checkpoint.gguf_io import gguf_config, iter_gguf
from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.tools.assets import fetch

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_path():
    return fetch("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def raw(gguf_path):
    reader = gguf.GGUFReader(gguf_path)
    return {t.name: t for t in reader.tensors}


def _q8_0(block_bytes: np.ndarray) -> np.ndarray:
    """ggml block_q8_0: fp16 scale, then 32 int8 quants; x = d * q."""
    blocks = block_bytes.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(-1)


def _q4_1(block_bytes: np.ndarray) -> np.ndarray:
    """ggml block_q4_1: fp16 scale d, fp16 min m, 16 bytes of nibbles (low nibbles = first 16 values)."""
    blocks = block_bytes.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([blocks[:, 4:] & 0x0F, blocks[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * q + m).reshape(-1)


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_first_layer_dequantized_and_unpermuted(gguf_path, raw):
    first = dict(itertools.islice(iter_gguf(gguf_path), 11))  # token_embd and all of blk.0
    embed = first["model.embed_tokens.weight"]
    assert embed.shape == (49152, 576) and embed.dtype == torch.float32
    rows = np.asarray(raw["token_embd.weight"].data[:3])
    assert np.array_equal(embed[:3].numpy().reshape(-1), _q8_0(rows))
    assert raw["blk.0.attn_q.weight"].tensor_type.name == "Q4_1"
    for gguf_name, hf_name, heads in (("blk.0.attn_q.weight", "q_proj", 9), ("blk.0.attn_k.weight", "k_proj", 3)):
        ours = first[f"model.layers.0.self_attn.{hf_name}.weight"]
        stored = _q4_1(np.asarray(raw[gguf_name].data)).reshape(ours.shape)
        assert not torch.equal(ours, torch.from_numpy(stored))  # the rows really were permuted
        assert torch.equal(_llama_cpp_permute(ours, heads), torch.from_numpy(stored))
    v = first["model.layers.0.self_attn.v_proj.weight"]
    assert torch.equal(v, torch.from_numpy(_q4_1(np.asarray(raw["blk.0.attn_v.weight"].data)).reshape(v.shape)))
    norm = first["model.layers.0.input_layernorm.weight"]
    assert torch.equal(norm, torch.from_numpy(np.array(raw["blk.0.attn_norm.weight"].data)))


def test_first_layer_matches_transformers_processor(gguf_path, raw):
    gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    processor = gguf_utils.LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    first = dict(itertools.islice(iter_gguf(gguf_path), 11))
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight"):
        tensor = raw[name]
        expected = processor.process(gguf.dequantize(tensor.data, tensor.tensor_type), name).weights
        hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "ffn_down": "mlp.down_proj"}
        ours = first[f"model.layers.0.{hf[name.split('.')[2]]}.weight"]
        assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(expected))), name


def test_config_from_metadata(gguf_path):
    config = gguf_config(gguf_path)
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert config["intermediate_size"] == 1536 and config["vocab_size"] == 49152
    assert config["rope_theta"] == 100000.0 and config["max_position_embeddings"] == 8192
    assert config["tie_word_embeddings"] is True  # the file has no output.weight


def test_not_a_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable GGUF file"):
        load_checkpoint(path)


@pytest.mark.slow
def test_full_conversion_matches_transformers_gguf_loader(gguf_path, tmp_path):
    """Every tensor and the config against transformers' own GGUF loader (about 30 s)."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    out = tmp_path / "smollm2.safetensors"
    config = gguf_to_native(gguf_path, out)
    reference_config = load_gguf_checkpoint(str(gguf_path))["config"]
    for key in (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "vocab_size",
        "num_key_value_heads",
        "rope_theta",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
    ):
        assert config[key] == reference_config[key], key
    hf_config = transformers.LlamaConfig(**{k: v for k, v in reference_config.items() if k != "model_type"})
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(hf_config)
    reference = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)["tensors"]
    ours = load_checkpoint(out)
    assert set(ours) == {LLAMA_HF_KEY_MAP.to_native(k) for k in reference}
    for name, tensor in reference.items():
        assert torch.equal(ours[LLAMA_HF_KEY_MAP.to_native(name)], tensor), name
