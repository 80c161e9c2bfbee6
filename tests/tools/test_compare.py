"""`python -m torchformers.tools.compare`: a correct conversion passes; broken ones are located.

The reference is a tiny random Hugging Face `LlamaForCausalLM` written with `save_pretrained`; the
candidate is its conversion to native names (`convert_checkpoint`), then broken on purpose: one layer's
weight perturbed, w1/w3 swapped, a wrong RoPE theta, a wrong RMSNorm eps.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchformers.checkpoint import convert_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from torchformers.tools.compare import main  # noqa: E402

HF_CONFIG = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _hf_folder(path, seed=0, **overrides):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**HF_CONFIG, **overrides}))
    with torch.no_grad():  # a wider spread than HF's init so that every layer matters to the output
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.15)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(Hugging Face folder, converted native checkpoint)."""
    root = tmp_path_factory.mktemp("compare")
    hf = _hf_folder(root / "hf")
    native = root / "native.safetensors"
    convert_checkpoint(hf, native)
    return hf, native


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_correct_conversion_has_no_divergence(pair, capsys, tmp_path):
    hf, native = pair
    report = tmp_path / "table.json"
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", native, "--json", report)
    assert code == 0
    assert _last_line(out) == "no divergence"
    table = json.loads(report.read_text())
    assert table["ok"] and table["first_divergence"] is None
    layers = {row["candidate"]: row for row in table["layers"]}
    # every kind of module is matched through the key map, in forward order
    assert layers["model.layers.1.feed_forward"]["reference"] == "model.layers.1.mlp"
    assert layers["model.layers.0.feed_forward.w1"]["reference"] == "model.layers.0.mlp.gate_proj"
    assert layers["model.layers.0.attention"]["reference"] == "model.layers.0.self_attn"
    assert layers["model.norm_out"]["reference"] == "model.norm"
    names = [row["candidate"] for row in table["layers"]]
    assert names[0] == "model.tok_embeddings" and names[-1] == "lm_head"
    assert names.index("model.layers.0.attention_norm") < names.index("model.layers.1.attention_norm")
    assert all(row["max_abs"] <= 1e-5 and row["cosine"] > 0.99999 for row in table["layers"])


def test_tied_embeddings_and_folder_candidate(tmp_path, capsys):
    """A tied model, candidate given as a torchformers folder (config.json + native weights)."""
    hf = _hf_folder(tmp_path / "hf", seed=3, tie_word_embeddings=True)
    folder = tmp_path / "native"
    folder.mkdir()
    convert_checkpoint(hf, folder / "model.safetensors")
    (folder / "config.json").write_text((hf / "config.json").read_text())
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", folder, "--ids", "5,9,1,33,70,2,8")
    assert code == 0 and _last_line(out) == "no divergence"
    assert "lm_head" in out and "input: 7 tokens" in out


def _broken(native, tmp_path, edit) -> str:
    state = load_checkpoint(native)
    edit(state)
    path = tmp_path / "broken.safetensors"
    save_checkpoint(state, path)
    return path


def test_perturbed_layer_is_named(pair, capsys, tmp_path):
    hf, native = pair

    def perturb(state):
        w = state["model.layers.1.attention.wv.weight"]
        state["model.layers.1.attention.wv.weight"] = w + 1e-3 * torch.randn_like(w)

    code, out, _ = _run(capsys, "--reference", hf, "--candidate", _broken(native, tmp_path, perturb))
    assert code == 1
    assert _last_line(out) == "first divergence: model.layers.1.attention.wv"


def test_swapped_w1_w3_is_named(pair, capsys, tmp_path):
    hf, native = pair

    def swap(state):
        for i in range(HF_CONFIG["num_hidden_layers"]):
            w1, w3 = f"model.layers.{i}.feed_forward.w1.weight", f"model.layers.{i}.feed_forward.w3.weight"
            state[w1], state[w3] = state[w3], state[w1]

    code, out, _ = _run(capsys, "--reference", hf, "--candidate", _broken(native, tmp_path, swap))
    assert code == 1
    assert _last_line(out) == "first divergence: model.layers.0.feed_forward.w1"


def test_wrong_rope_theta_points_at_attention(pair, capsys, tmp_path):
    """q/k/v projections still match (RoPE comes after them); the input of wo does not: the attention is named."""
    hf, native = pair
    folder = tmp_path / "candidate"
    folder.mkdir()
    config = json.loads((hf / "config.json").read_text())
    for key in ("rope_theta",):
        config[key] = 500000.0
    if "rope_parameters" in config:  # transformers 5 writes theta inside rope_parameters
        config["rope_parameters"]["rope_theta"] = 500000.0
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(native.read_bytes())
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", folder)
    assert code == 1
    assert "model.layers.0.attention.wq " in out and "wo" in out
    assert _last_line(out) == "first divergence: model.layers.0.attention"


def test_wrong_norm_eps_from_yaml_is_named(pair, capsys, tmp_path):
    hf, native = pair
    yaml_path = tmp_path / "candidate.yaml"
    yaml_path.write_text(
        f"""\
run_mode: predict
load_checkpoint: '{native}'
model:
  model_config:
    type: LlamaConfig
    seq_length: 64
    vocab_size: 96
    hidden_size: 64
    intermediate_size: 112
    num_layers: 2
    num_heads: 4
    n_kv_heads: 2
    rms_norm_eps: 1.0e-5
    compute_dtype: float32
    param_init_type: float32
  arch:
    type: LlamaForCausalLM
"""
    )
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", yaml_path)
    assert code == 1
    assert _last_line(out) == "first divergence: model.layers.0.attention_norm"
    # the same YAML with the right eps passes
    yaml_path.write_text(yaml_path.read_text().replace("1.0e-5", "1.0e-6"))
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", yaml_path)
    assert code == 0 and _last_line(out) == "no divergence"


def test_backward_compares_loss_and_gradients(pair, capsys, tmp_path):
    hf, native = pair
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", native, "--backward", "--json", tmp_path / "t.json")
    assert code == 0
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["loss"]["ok"] and table["loss"]["max_abs"] <= 1e-5
    grads = {row["candidate"] for row in table["gradients"]}
    assert "model.layers.1.feed_forward.w2.weight" in grads and "lm_head.weight" in grads
    assert all(row["ok"] for row in table["gradients"])

    def scale_norm(state):
        state["model.norm_out.weight"] = state["model.norm_out.weight"] * 1.5

    code, out, _ = _run(capsys, "--reference", hf, "--candidate", _broken(native, tmp_path, scale_norm), "--backward")
    assert code == 1
    assert _last_line(out) == "first divergence: model.norm_out"
    assert "DIFF" in out.split("backward")[1]


def test_gradient_only_divergence_is_found(pair, capsys):
    """Hugging Face's embedding has padding_idx = pad_token_id (0 here): the pad row gets no gradient.
    Outputs and loss agree; only the embedding gradient differs, and the tool says so."""
    hf, native = pair
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", native, "--ids", "5,0,9,33,0,7", "--backward")
    assert code == 1
    forward, backward = out.split("backward (")
    assert "DIFF" not in forward
    assert _last_line(out) == "first divergence: model.tok_embeddings"


def test_text_through_a_tokenizer(pair, capsys, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf, native = pair
    vocab = {w: i for i, w in enumerate(["<unk>", "the", "cat", "sat", "on", "mat"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    argv = ["--reference", hf, "--candidate", native, "--text", "the cat sat on the mat"]
    code, out, _ = _run(capsys, *argv, "--tokenizer", tmp_path / "tokenizer.json")
    assert code == 0 and "input: 6 tokens" in out
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--tokenizer" in err


def test_bf16_preset_runs_and_passes(pair, capsys):
    hf, native = pair
    code, out, _ = _run(capsys, "--reference", hf, "--candidate", native, "--preset", "bf16")
    assert "candidate: " in out and "bfloat16" in out
    assert code == 0 and _last_line(out) == "no divergence"


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "no such file or folder"),
        ("no_config", "has no config.json"),
        ("bare_reference", "bare checkpoint file has no config"),
        ("bad_ids", "--ids"),
    ],
)
def test_user_errors_are_one_line(pair, capsys, tmp_path, case, expected):
    hf, native = pair
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {
        "missing": ["--reference", hf, "--candidate", tmp_path / "nope.safetensors"],
        "no_config": ["--reference", empty, "--candidate", native],
        "bare_reference": ["--reference", native, "--candidate", native],
        "bad_ids": ["--reference", hf, "--candidate", native, "--ids", "1,500"],
    }[case]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err and err.startswith("compare: error:")


def test_missing_transformers_is_a_clear_error(pair, capsys, monkeypatch):
    import sys

    hf, native = pair
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    code, _, err = _run(capsys, "--reference", hf, "--candidate", native)
    assert code == 2 and "'transformers' package" in err


@pytest.mark.parametrize(
    "model_config,expected",
    [
        ({"num_layers": -1}, "num_layers"),
        ({"compute_dtype": "int8"}, "compute_dtype"),
        ({"type": "LlamaConfigz"}, "LlamaConfigz"),
    ],
)
def test_invalid_model_config_is_one_line(pair, capsys, tmp_path, model_config, expected):
    """A YAML whose model_config is invalid (a bad value, an unknown class) is a usage error, not a traceback."""
    import yaml

    hf, native = pair
    config = {"type": "LlamaConfig", "vocab_size": 96, "hidden_size": 64, "num_heads": 4, **model_config}
    candidate = tmp_path / "candidate.yaml"
    model = {"model_config": config, "arch": {"type": "LlamaForCausalLM"}}
    candidate.write_text(yaml.safe_dump({"load_checkpoint": str(native), "model": model}), encoding="utf-8")
    code, out, err = _run(capsys, "--reference", hf, "--candidate", candidate)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("compare: error:") and expected in err, err
