"""GGUF files kept quantized: block formats against the `gguf` package's dequantization, the layers built
from them against the float product, whole models against the same file dequantized to fp32, and the
int4 layer holding one copy of its weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchformers.checkpoint.gguf_blocks import GGUFBlocks, int4_groups, int8_groups
from torchformers.checkpoint.loader import load_weights
from torchformers.errors import ConfigError
from torchformers.generation import quantization
from torchformers.generation.gguf_quantized import load_gguf_quantized
from torchformers.generation.quantization import (
    Int4WeightOnlyLinear,
    Int8GroupedLinear,
    QuantizedEmbedding,
    quantization_settings,
    quantize_model,
)
from torchformers.models import LlamaConfig, LlamaForCausalLM

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q8_0": (32, 34)}


def _random_blocks(kind: str, n: int, k: int, seed: int, std: float = 0.02) -> np.ndarray:
    """(n, bytes per row) of random blocks: every quant bit pattern, fp16 scales of a sane size."""
    per, nbytes = BLOCK[kind]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, k // per, nbytes), dtype=np.uint8)
    halves = 1 if kind in ("Q4_0", "Q8_0") else 2  # d (and m / dmin)
    raw[..., : 2 * halves] = (rng.standard_normal((n, k // per, halves)) * std).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


def _ulps(reference: torch.Tensor, n: int = 4) -> float:
    return n * torch.finfo(torch.float32).eps * reference.abs().max().item()


def _weights(kind: str, q, scale, zero=None) -> torch.Tensor:
    s = scale.repeat_interleave(32, 1)
    if kind == "Q8_0":
        return q.float() * s
    return (q.float() - 8) * s + zero.repeat_interleave(32, 1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K", "Q8_0"])
def test_blocks_read_as_groups_equal_gguf_dequantization(kind):
    n, k = 24, 512
    data = _random_blocks(kind, n, k, seed=len(kind) + ord(kind[-1]))
    reference = torch.from_numpy(dequantize(data, QT[kind]).reshape(n, k))
    blocks = GGUFBlocks(kind, (n, k), data)
    groups = int8_groups(blocks) if kind == "Q8_0" else int4_groups(blocks)
    # equal to fp32 rounding: Q4_K's zero point 8·s − dmin·m is rounded once more than d·sc·q − dmin·m
    torch.testing.assert_close(_weights(kind, *groups), reference, rtol=1e-6, atol=_ulps(reference))
    if kind != "Q8_0":
        assert groups[0].min() >= 0 and groups[0].max() <= 15


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_quantized_by_gguf_round_trip(kind):
    """Floats quantized by the `gguf` package, read back as groups: its dequantization exactly."""
    w = np.random.default_rng(3).standard_normal((40, 96)).astype(np.float32)
    data = quantize(w, QT[kind])
    blocks = GGUFBlocks(kind, w.shape, data)
    groups = int8_groups(blocks) if kind == "Q8_0" else int4_groups(blocks)
    reference = torch.from_numpy(dequantize(data, QT[kind]).reshape(w.shape))
    torch.testing.assert_close(_weights(kind, *groups), reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K", "Q8_0"])
@pytest.mark.parametrize("kernel_dtype", [torch.float32, torch.bfloat16])
def test_layers_from_blocks_compute_the_dequantized_product(kind, kernel_dtype):
    n, k = 40, 512  # 40 output rows: not a multiple of the int4 kernel's 16... of 64 either
    data = _random_blocks(kind, n, k, seed=11)
    reference = torch.from_numpy(dequantize(data, QT[kind]).reshape(n, k)).double()
    blocks = GGUFBlocks(kind, (n, k), data)
    bias = torch.randn(n)
    if kind == "Q8_0":
        layer = Int8GroupedLinear(*int8_groups(blocks), bias)
    else:
        layer = Int4WeightOnlyLinear.from_groups(*int4_groups(blocks), bias)
    layer.kernel_dtype = kernel_dtype
    torch.testing.assert_close(layer.dequantize().double(), reference, rtol=1e-6, atol=_ulps(reference))
    x = torch.randn(3, 5, k)
    want = F.linear(x.double(), reference, bias.double())
    got = layer(x)
    assert got.shape == (3, 5, n) and got.dtype == torch.float32
    if kernel_dtype == torch.float32:
        # fp32 sums of K products: errors up to a few ulps of the sum of their magnitudes
        magnitude = (x.double().abs() @ reference.abs().t()).max().item()
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6 * magnitude)
    else:
        assert (got.double() - want).abs().max() <= 1.5e-2 * want.abs().max()
    # rows read back from the kernel layout (the layer released its portable tensors when it ran)
    ids = torch.tensor([3, 0, 39, 3, 17])
    rows = layer.rows(ids).double()
    if kernel_dtype == torch.float32:
        torch.testing.assert_close(rows, reference[ids], rtol=1e-6, atol=_ulps(reference))
    else:  # scales and zero points rounded to bf16, as the layer computes
        assert (rows - reference[ids]).abs().max() <= 2e-2 * reference.abs().max()


def test_from_groups_refuses_widths_that_are_not_whole_groups():
    with pytest.raises(ValueError, match="multiple of 32"):
        Int4WeightOnlyLinear.from_groups(torch.zeros(16, 40, dtype=torch.int32), torch.ones(16, 1), torch.ones(16, 1))
    with pytest.raises(ValueError, match="multiple of 32"):
        Int8GroupedLinear(torch.zeros(16, 40, dtype=torch.int8), torch.ones(16, 1))


# ------------------------------------------------------------------------------------------ one copy
def _held(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.buffers() if not t.is_meta)


@pytest.mark.parametrize("shape", [(64, 128), (30, 70)])
def test_int4_layer_holds_one_copy_and_saves_what_it_computes_with(shape):
    n, k = shape
    torch.manual_seed(n)
    lin = nn.Linear(k, n)
    layer = Int4WeightOnlyLinear(lin.weight, lin.bias, group_size=32)
    layer.kernel_dtype = torch.float32
    before = {name: t.clone() for name, t in layer.state_dict().items()}
    x = torch.randn(2, k)
    y = layer(x)
    assert all(getattr(layer, name).is_meta for name in Int4WeightOnlyLinear._PORTABLE)
    rows, k32 = layer._int4_packed.shape[0], -(-k // 32) * 32  # rows: N padded to the kernel's blocks of rows
    assert n <= rows < n + 64
    assert _held(layer) == rows * k32 // 2 + rows * (k32 // 32) * 2 * 4  # packed nibbles + fp32 scales and zeros
    after = layer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    # a bf16 kernel computes (and saves) bf16 scales and zero points
    layer.kernel_dtype = torch.bfloat16
    layer(x)
    bf16 = layer.state_dict()
    assert torch.equal(bf16["weight_int4"], before["weight_int4"])
    assert torch.equal(bf16["weight_scale"], before["weight_scale"].bfloat16().float())
    # loading into a released layer (torch's load_state_dict) replaces its weights; moving restores them
    fresh = Int4WeightOnlyLinear(torch.randn(n, k), lin.bias, group_size=32)
    fresh.kernel_dtype = torch.float32
    fresh(x)
    fresh.load_state_dict(before)
    assert torch.equal(fresh(x), y)
    fresh.to("cpu")
    assert not fresh.weight_int4.is_meta and torch.equal(fresh.weight_int4, before["weight_int4"])


# ------------------------------------------------------------------------------------------ models
CONFIG = {
    "num_layers": 2, "hidden_size": 256, "num_heads": 4, "n_kv_heads": 2, "intermediate_size": 512,
    "vocab_size": 96, "seq_length": 64, "rms_norm_eps": 1e-5, "compute_dtype": "float32",
    "param_init_type": "float32", "layernorm_compute_type": "float32",
}  # fmt: skip


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (rotate-half rows -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, kinds: dict[str, str], tied: bool, seed: int = 0) -> None:
    """A tiny Llama GGUF: tensors by role ("embed", "head", "attn", "ffn") in the given ggml types."""
    c = CONFIG
    hidden, ffn, heads, kv, vocab = c["hidden_size"], c["intermediate_size"], c["num_heads"], c["n_kv_heads"], 96
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c["num_layers"])
    writer.add_context_length(c["seq_length"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)

    def add(name: str, shape: tuple[int, ...], role: str, permute_heads: int | None = None):
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if role == "norm":
            writer.add_tensor(name, (1 + w).astype(np.float32))
            return
        if permute_heads:
            w = _permute(w, permute_heads)
        kind = kinds[role]
        if kind == "Q4_K":  # (the gguf package does not quantize to Q4_K): random blocks
            data = _random_blocks(kind, *shape, seed=int(rng.integers(1 << 30)), std=0.0003)
        else:
            data = quantize(w, QT[kind])
        writer.add_tensor(name, data, raw_dtype=QT[kind])

    add("token_embd.weight", (vocab, hidden), "embed")
    for i in range(c["num_layers"]):
        add(f"blk.{i}.attn_norm.weight", (hidden,), "norm")
        add(f"blk.{i}.attn_q.weight", (hidden, hidden), "attn", heads)
        add(f"blk.{i}.attn_k.weight", (kv * head_dim, hidden), "attn", kv)
        add(f"blk.{i}.attn_v.weight", (kv * head_dim, hidden), "attn")
        add(f"blk.{i}.attn_output.weight", (hidden, hidden), "attn")
        add(f"blk.{i}.ffn_norm.weight", (hidden,), "norm")
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden), "ffn")
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), "ffn")
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), "ffn")
    add("output_norm.weight", (hidden,), "norm")
    if not tied:
        add("output.weight", (vocab, hidden), "head")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 95, 7, 64, 12], [0, 44, 3, 91, 8, 20, 17, 5, 6, 90]])


@pytest.mark.parametrize(
    ("kinds", "tied"),
    [
        ({"embed": "Q8_0", "attn": "Q4_1", "ffn": "Q4_1"}, True),  # SmolLM2's file
        ({"embed": "Q4_0", "attn": "Q4_0", "ffn": "Q4_K", "head": "Q8_0"}, False),
        ({"embed": "Q4_1", "attn": "Q5_0", "ffn": "Q4_1"}, True),  # Q5_0: no layer for it, loads as float
    ],
)
def test_gguf_model_kept_quantized_equals_the_dequantized_model(kinds, tied, tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, kinds, tied)
    config = LlamaConfig(tie_word_embeddings=tied, **CONFIG)
    reference = LlamaForCausalLM(config).eval()
    load_weights(reference, path)  # the file dequantized to fp32
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    load_gguf_quantized(model, path, kernel_dtype=torch.float32)
    assert not any(t.is_meta for t in model.parameters())
    layers = {type(m) for m in model.modules()}
    assert Int4WeightOnlyLinear in layers
    assert (nn.Linear in layers) == ("Q5_0" in kinds.values())
    if kinds["embed"] == "Q8_0":
        assert isinstance(model.model.tok_embeddings, QuantizedEmbedding)
        assert (model.lm_head is model.model.tok_embeddings._tied_table) == tied
    with torch.no_grad():
        want, got = reference(IDS), model(IDS)
        assert (got - want).abs().max() < 1e-4, (got - want).abs().max()
        out = model.generate(IDS[:1, :4].tolist(), max_new_tokens=6, do_sample=False)
        ref = reference.generate(IDS[:1, :4].tolist(), max_new_tokens=6, do_sample=False)
    assert [o.tolist() for o in out] == [r.tolist() for r in ref]


def test_gguf_settings_and_refusals():
    settings = quantization_settings({"quant_method": "gguf", "kernel_dtype": "float32"})
    assert settings.weight == "gguf" and settings.torch_kernel_dtype() == torch.float32
    assert quantization_settings("gguf").torch_kernel_dtype() is None
    with pytest.raises(ConfigError, match="group_size"):
        quantization_settings({"quant_method": "gguf", "group_size": 32})
    with pytest.raises(ConfigError, match="kernel_dtype"):
        quantization_settings({"quant_method": "int4", "kernel_dtype": "float16"})
    with pytest.raises(ConfigError, match="gguf"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), settings)
    assert quantization.QuantizationSettings.from_metadata(settings.to_metadata()) == settings


def test_launcher_loads_a_gguf_checkpoint_kept_quantized(tmp_path):
    from pathlib import Path

    from torchformers.cli import config_from_args
    from torchformers.trainer.base_trainer import CausalLanguageModelingTrainer

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, {"embed": "Q8_0", "attn": "Q4_1", "ffn": "Q4_0"}, tied=True)
    tiny = Path(__file__).parents[2] / "configs" / "tiny" / "predict_llama_tiny.yaml"
    sizes = {**{k: v for k, v in CONFIG.items() if "dtype" not in k and "type" not in k}, "tie_word_embeddings": True}

    def config(checkpoint):
        argv = ["--config", str(tiny), "--load_checkpoint", str(checkpoint), "--quantization", "gguf"]
        for key, value in sizes.items():
            argv += [f"--model.model_config.{key}", str(value)]
        return config_from_args(argv)

    model = CausalLanguageModelingTrainer().build_network(config(path))
    assert isinstance(model.lm_head, Int8GroupedLinear) and isinstance(model.model.layers[0].attention.wq,
                                                                         Int4WeightOnlyLinear)  # fmt: skip
    expected = LlamaForCausalLM(model.config)  # the YAML's config, filled by the loader directly
    load_gguf_quantized(expected, path)
    with torch.no_grad():
        assert torch.equal(model(IDS), expected(IDS))
    (tmp_path / "float.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="expected a .gguf file"):
        CausalLanguageModelingTrainer().build_network(config(tmp_path / "float.safetensors"))
