"""MindFormers' `qkv_concat` checkpoints (fused `w_qkv` / `w_gate_hidden`) load into the separate parameters.

`fixtures/fused/` was written by the real MindFormers 1.9 (`fixtures/make_fused_ckpt.py`): a tiny GQA
Llama with `qkv_concat=True`, its checkpoint and its logits for one prompt.
"""

from pathlib import Path

import pytest
import torch

from torchformers.checkpoint import CheckpointError
from torchformers.checkpoint.loader import load_weights, read_weights
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
from torchformers.models.llama.convert_weight import LLAMA_FUSED

FIXTURES = Path(__file__).parent / "fixtures" / "fused"


def _config(**kw):
    sizes = dict(vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=32,
                 seq_length=8, compute_dtype="float32", param_init_type="float32")  # fmt: skip
    return LlamaConfig(**{**sizes, **kw})


def test_a_mindformers_qkv_concat_checkpoint_gives_mindformers_logits():
    model = LlamaForCausalLM(_config()).eval()
    report = load_weights(model, FIXTURES / "llama_qkv_concat.ckpt")
    assert report.ok
    reference = read_weights(FIXTURES / "logits.ckpt")
    with torch.no_grad():
        logits = model(reference["input_ids"].long())
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_fuse_and_split_are_inverse_and_group_rows_by_kv_head(kv_heads):
    config = _config(n_kv_heads=kv_heads)
    kv = 4 // kv_heads
    state = {
        "model.layers.0.attention.wq.weight": torch.arange(16 * 16.0).reshape(16, 16),
        "model.layers.0.attention.wk.weight": -torch.arange(16 // kv * 16.0).reshape(-1, 16),
        "model.layers.0.attention.wv.weight": 1000 + torch.arange(16 // kv * 16.0).reshape(-1, 16),
        "model.layers.0.feed_forward.w1.weight": torch.randn(32, 16),
        "model.layers.0.feed_forward.w3.weight": torch.randn(32, 16),
        "model.norm_out.weight": torch.ones(16),
    }
    fused = LLAMA_FUSED.fuse_state(state, config)
    assert list(fused) == ["model.layers.0.attention.w_qkv.weight", "model.layers.0.feed_forward.w_gate_hidden.weight",
                           "model.norm_out.weight"]  # fmt: skip
    w_qkv = fused["model.layers.0.attention.w_qkv.weight"]
    # first group: the query rows of heads 0..n_rep-1, then kv head 0's key rows, then its value rows
    rep_rows = 16 // kv_heads
    assert torch.equal(w_qkv[:rep_rows], state["model.layers.0.attention.wq.weight"][:rep_rows])
    assert torch.equal(w_qkv[rep_rows : rep_rows + 4], state["model.layers.0.attention.wk.weight"][:4])
    gate_hidden = fused["model.layers.0.feed_forward.w_gate_hidden.weight"]
    assert torch.equal(gate_hidden[1], state["model.layers.0.feed_forward.w3.weight"][0])
    back = dict(LLAMA_FUSED.split_state(fused, config))
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())


def test_a_name_both_alone_and_fused_is_an_error():
    state = {"model.layers.0.attention.w_qkv.weight": torch.zeros(32, 16),
             "model.layers.0.attention.wq.weight": torch.zeros(16, 16)}  # fmt: skip
    with pytest.raises(CheckpointError, match="both alone and in"):
        LLAMA_FUSED.split_state(state, _config())


def test_convert_weight_qkv_concat_from_a_config_json_gives_the_hugging_face_logits(tmp_path, hf_llama_dir):
    import convert_weight

    transformers = pytest.importorskip("transformers")
    out = tmp_path / "fused.ckpt"
    args = ["--model", "llama", "--input_path", str(hf_llama_dir / "config.json"), "--output_path", str(out),
            "--qkv_concat", "True"]  # fmt: skip
    assert convert_weight.main(args) == 0
    state = read_weights(out)
    assert "model.layers.1.attention.w_qkv.weight" in state and "model.layers.1.attention.wq.weight" not in state
    assert state["model.layers.0.feed_forward.w_gate_hidden.weight"].shape == (2 * 48, 32)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(hf_llama_dir)).eval()
    load_weights(model, out)
    reference = transformers.LlamaForCausalLM.from_pretrained(hf_llama_dir).eval()
    ids = torch.tensor([[3, 17, 42, 5, 60]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_convert_weight_qkv_concat_needs_the_config_json(tmp_path, hf_state, capsys):
    from safetensors.torch import save_file

    import convert_weight

    save_file(hf_state, tmp_path / "model.safetensors")
    args = ["--model", "llama", "--input_path", str(tmp_path / "model.safetensors"), "--output_path",
            str(tmp_path / "o.ckpt"), "--qkv_concat", "True"]  # fmt: skip
    assert convert_weight.main(args) == 1
    assert "--qkv_concat needs the model's config.json" in capsys.readouterr().err


def test_reversed_conversion_splits_a_fused_checkpoint_back_to_hugging_face(tmp_path, hf_llama_dir, hf_state):
    import shutil

    import convert_weight

    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    shutil.copy(hf_llama_dir / "config.json", fused_dir / "config.json")
    assert convert_weight.main(["--model", "llama", "--input_path", str(hf_llama_dir), "--output_path",
                                str(fused_dir / "llama.ckpt"), "--qkv_concat", "True"]) == 0  # fmt: skip
    assert convert_weight.main(["--model", "llama", "--input_path", str(fused_dir / "llama.ckpt"), "--output_path",
                                str(tmp_path / "hf"), "--reversed"]) == 0  # fmt: skip
    back = read_weights(tmp_path / "hf" / "model.safetensors")
    assert set(back) == set(hf_state) and all(torch.equal(back[k], v) for k, v in hf_state.items())
