"""`PretrainedModel`: save/load folders (sharded too), Hugging Face folders, checkpoint error reports."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from torchformers.checkpoint import save_checkpoint
from torchformers.models import LlamaConfig, LlamaForCausalLM, PretrainedModel
from torchformers.models.modeling_utils import CheckpointLoadError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister


def tiny(**kw) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=48,
               seq_length=32, compute_dtype="float32", param_init_type="float32", init_method_std=0.2)  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **kw})).eval()


def test_registered_and_parameter_names():
    assert MindFormerRegister.get_cls(MindFormerModuleType.MODELS, "LlamaForCausalLM") is LlamaForCausalLM
    names = set(tiny().state_dict())
    for name in ("model.tok_embeddings.embedding_weight", "model.layers.1.attention_norm.weight",
                 "model.layers.1.attention.wq.weight", "model.layers.0.attention.wo.weight",
                 "model.layers.0.ffn_norm.weight", "model.layers.0.feed_forward.w1.weight",
                 "model.layers.0.feed_forward.w2.weight", "model.layers.0.feed_forward.w3.weight",
                 "model.norm_out.weight", "lm_head.weight"):  # fmt: skip
        assert name in names
    assert tiny().model.layers[0].attention.wk.weight.shape == (2 * 8, 32)


@pytest.mark.parametrize("tied", [False, True])
def test_save_and_load_round_trip(tmp_path, tied):
    model = tiny(tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.yaml").is_file()
    assert (tmp_path / "model.safetensors").is_file()
    again = LlamaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    if tied:
        assert again.lm_head.weight is again.model.tok_embeddings.embedding_weight
    # the base class finds the model class through the registry
    assert type(PretrainedModel.from_pretrained(tmp_path)) is LlamaForCausalLM


def test_sharded_save(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    again = LlamaForCausalLM.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_loads_a_hugging_face_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    hf_config = transformers.LlamaConfig(**sizes, num_key_value_heads=2, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp_path)
    ours = LlamaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_load_checkpoint_reports_names(tmp_path, caplog):
    model = tiny()
    state = model.state_dict()
    state.pop("model.layers.1.ffn_norm.weight")
    state["model.layers.0.attention.extra.weight"] = torch.zeros(3)
    state["model.norm_out.weight"] = torch.zeros(7)
    path = tmp_path / "bad.safetensors"
    save_checkpoint(state, path)
    with pytest.raises(CheckpointLoadError) as err:
        tiny().load_checkpoint(path)
    message = str(err.value)
    assert "bad.safetensors" in message
    assert "model.layers.1.ffn_norm.weight" in message  # missing
    assert "model.layers.0.attention.extra.weight" in message  # unexpected
    assert "model.norm_out.weight checkpoint [7] vs model [32]" in message  # shape
    other = tiny(init_method_std=0.5)
    with caplog.at_level(logging.WARNING):
        report = other.load_checkpoint(path, strict=False)
    assert "ffn_norm" in caplog.text and not report.ok
    assert torch.equal(other.lm_head.weight, model.lm_head.weight)  # the matching tensors were loaded
    with pytest.raises(CheckpointLoadError, match="does not exist"):
        tiny().load_checkpoint(tmp_path / "nope.safetensors")


def test_load_into_meta_model_and_predict_layout(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    with torch.device("meta"):
        meta_model = LlamaForCausalLM(model.config)
    (inputs,) = meta_model.prepare_inputs_for_predict_layout()
    assert inputs.is_meta and inputs.shape == (1, 32)
    meta_model.load_checkpoint(tmp_path)
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(meta_model.eval()(ids), model(ids))


def test_one_loader_fills_any_module_and_reports_names(tmp_path):
    from torchformers.checkpoint.loader import LoadReport, load_state_into, load_weights, open_weights
    from torchformers.errors import CheckpointError

    assert CheckpointLoadError is CheckpointError  # the old name still catches the loader's errors
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    path = tmp_path / "plain.safetensors"
    save_checkpoint(state, path)
    lazy = open_weights(path)
    assert set(lazy) == set(state) and not isinstance(lazy, dict)  # safetensors are read per tensor
    report = load_weights(net, path)
    assert isinstance(report, LoadReport) and report.ok and report.source == str(path)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())

    bad = {**state, "1.weight": torch.zeros(5, 4), "2.weight": torch.zeros(1)}
    del bad["0.bias"]
    save_checkpoint(bad, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_weights(net, tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "bad.safetensors" in message and "0.bias" in message and "2.weight" in message
    assert "1.weight checkpoint [5, 4] vs model [2, 4]" in message
    report = load_state_into(net, bad, strict=False)
    assert report.missing == ["0.bias"] and report.unexpected == ["2.weight"] and len(report.mismatched) == 1

    # only: fill a subset (e.g. adapters); model_is_part: a pipeline stage takes the names it holds
    first = {k: v for k, v in state.items() if k.startswith("0.")}
    assert load_state_into(net, first, only=lambda name: name.startswith("0.")).ok
    stage = torch.nn.Sequential(torch.nn.Linear(3, 4))
    assert load_weights(stage, path, model_is_part=True).ok
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(stage, tmp_path / "nope")


def test_one_loader_reads_folders_and_fills_tied_meta_models(tmp_path):
    from torchformers.checkpoint.loader import read_weights

    model = tiny(tie_word_embeddings=True)
    model.save_pretrained(tmp_path, max_shard_size=20_000)
    weights = read_weights(tmp_path)
    assert "lm_head.weight" not in weights  # the tied copy is written once
    with torch.device("meta"):
        meta_model = LlamaForCausalLM(model.config)
    report = meta_model.load_checkpoint(weights)
    assert report.ok and not report.renamed_from_hf
    assert meta_model.lm_head.weight is meta_model.model.tok_embeddings.embedding_weight
    assert not any(p.is_meta for p in meta_model.parameters())
