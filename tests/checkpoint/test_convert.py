"""Hugging Face <-> native conversion through convert_weight.py, every format, and the error messages."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import convert_weight
from torchformers.checkpoint import (
    CheckpointError,
    check_tensors,
    iter_checkpoint,
    load_checkpoint,
    load_native_checkpoint,
    save_checkpoint,
)
from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP


def _convert(*args: str) -> None:
    assert convert_weight.main(list(args)) == 0


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_hf_native_hf_round_trip_is_bit_exact(tmp_path, hf_llama_dir, hf_state, suffix):
    native = tmp_path / f"llama{suffix}"
    _convert("--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(native))
    native_state = load_checkpoint(native)
    assert set(native_state) == {LLAMA_HF_KEY_MAP.to_native(k) for k in hf_state}
    assert "model.layers.1.attention.wq.weight" in native_state
    back = tmp_path / "hf_back"
    _convert("--model", "llama", "--input_path", str(native), "--output_path", str(back), "--reversed")
    restored = load_file(str(back / "model.safetensors"))  # read with the safetensors library itself
    assert set(restored) == set(hf_state)
    for name, tensor in hf_state.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name


def test_reversed_to_bin_and_back(tmp_path, hf_llama_dir, hf_state):
    native = tmp_path / "llama.ckpt"
    _convert("--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(native))
    state = load_checkpoint(native)
    state["adam_m.model.norm_out.weight"] = torch.zeros(32)  # training state is left out going back
    state["global_step"] = torch.tensor(3)
    save_checkpoint(state, native)
    out = tmp_path / "pytorch_model.bin"
    _convert("--model", "llama", "--input_path", str(native), "--output_path", str(out), "--reversed")
    restored = torch.load(out, weights_only=True)
    assert set(restored) == set(hf_state)
    assert all(torch.equal(restored[k], v) for k, v in hf_state.items())
    assert all(
        torch.equal(a, b) for (_, a), (_, b) in zip(sorted(load_checkpoint(out).items()), sorted(restored.items()))
    )


def test_dtype_conversion(tmp_path, hf_llama_dir, hf_state):
    bf16 = tmp_path / "llama_bf16.ckpt"
    _convert("--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(bf16), "--dtype", "bf16")
    native = load_checkpoint(bf16)
    for name, tensor in hf_state.items():
        got = native[LLAMA_HF_KEY_MAP.to_native(name)]
        assert got.dtype == torch.bfloat16 and torch.equal(got, tensor.to(torch.bfloat16)), name
    fp32 = tmp_path / "back.safetensors"
    _convert("--model", "llama", "--input_path", str(bf16), "--output_path", str(fp32), "--reversed", "--dtype", "fp32")
    back = load_file(str(fp32))
    for name, tensor in hf_state.items():
        assert back[name].dtype == torch.float32
        assert torch.equal(back[name], tensor.to(torch.bfloat16).float()), name
        assert (back[name] - tensor).abs().max() <= tensor.abs().max() * 2**-8  # bf16 keeps 8 significant bits


def test_sharded_safetensors_and_bin_folders_load(tmp_path, hf_state):
    names = sorted(hf_state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: hf_state[k] for k in keys}, str(tmp_path / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text("{}")
    for path in (tmp_path, tmp_path / "model.safetensors.index.json"):
        loaded = load_checkpoint(path)
        assert set(loaded) == set(hf_state) and all(torch.equal(loaded[k], v) for k, v in hf_state.items())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(hf_state, bin_dir / "pytorch_model.bin")
    loaded = load_checkpoint(bin_dir)
    assert all(torch.equal(loaded[k], v) for k, v in hf_state.items())


def test_safetensors_writer_matches_library(tmp_path):
    state = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(6, dtype=torch.int64), "c": torch.tensor(1.5)}
    ours = tmp_path / "ours.safetensors"
    save_checkpoint(state, ours, metadata={"format": "pt"})
    loaded = load_file(str(ours))
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())
    theirs = tmp_path / "theirs.safetensors"
    save_file(state, str(theirs))
    assert dict(iter_checkpoint(theirs)).keys() == state.keys()
    assert all(torch.equal(t, state[k]) for k, t in iter_checkpoint(theirs))


def test_native_ckpt_loads_without_mapping_and_hf_is_renamed(tmp_path, hf_llama_dir, hf_state):
    native = tmp_path / "llama.ckpt"
    _convert("--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(native))
    from_ckpt = load_native_checkpoint(native)
    from_hf = load_native_checkpoint(hf_llama_dir)
    assert list(from_ckpt) == list(load_checkpoint(native))
    assert set(from_hf) == set(from_ckpt)
    assert all(torch.equal(from_hf[k], v) for k, v in from_ckpt.items())


def test_pickle_needed_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "meta": {"epoch": object.__new__(torch.nn.Identity)}}, path)
    with pytest.raises(CheckpointError, match=rf"{path}.*need pickle.*allow_pickle=True"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"tensor 'meta': entry is a dict, expected a tensor"):
        load_checkpoint(path, allow_pickle=True)


def test_unknown_format(tmp_path):
    path = tmp_path / "weights.xyz"
    path.write_bytes(b"hello world, not weights")
    with pytest.raises(CheckpointError, match=rf"{path}: unknown checkpoint format \(suffix '.xyz'\); expected"):
        load_checkpoint(path)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=rf"{empty}: folder holds no weights"):
        load_checkpoint(empty)


def test_truncated_and_corrupted_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_checkpoint({"a": torch.randn(8), "model.norm_out.weight": torch.randn(16)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match=rf"{path}, tensor 'model.norm_out.weight': file is truncated"):
        load_checkpoint(path)
    path.write_bytes(data[:8] + b"#" + data[9:])
    with pytest.raises(CheckpointError, match=rf"{path}: corrupted safetensors header"):
        load_checkpoint(path)


def test_truncated_torch_file(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"a": torch.randn(64)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{path}: corrupted or truncated PyTorch file"):
        load_checkpoint(path)


def test_shape_dtype_and_missing_key_against_a_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    path = tmp_path / "m.ckpt"
    good = {k: v.detach().clone() for k, v in model.state_dict().items()}
    check_tensors(good, model, source=path)
    with pytest.raises(CheckpointError, match=rf"{path}, tensor '0.weight': shape \[4, 3\], expected \[3, 4\]"):
        check_tensors({**good, "0.weight": torch.zeros(4, 3)}, model, source=path)
    with pytest.raises(CheckpointError, match=rf"{path}, tensor '0.bias': dtype torch.float16, expected torch.float32"):
        check_tensors({**good, "0.bias": torch.zeros(3, dtype=torch.float16)}, model, source=path)
    with pytest.raises(CheckpointError, match=rf"{path}, tensor '0.bias': missing 1 tensor\(s\) the model expects"):
        check_tensors({"0.weight": good["0.weight"]}, model, source=path)


def test_unmapped_name_and_bad_arguments(tmp_path, capsys):
    path = tmp_path / "odd.safetensors"
    save_checkpoint({"model.embed_tokens.weight": torch.zeros(2, 2), "vision.proj": torch.zeros(2)}, path)
    assert (
        convert_weight.main(["--model", "llama", "--input_path", str(path), "--output_path", str(tmp_path / "o.ckpt")])
        == 1
    )
    assert f"{path}, tensor 'vision.proj': llama key map: no native name" in capsys.readouterr().err
    out = tmp_path / "o.safetensors"
    assert convert_weight.main(["--model", "gpt9", "--input_path", str(path), "--output_path", str(out)]) == 1
    assert "--model 'gpt9' has no weight key map" in capsys.readouterr().err


def test_extra_arguments_are_tolerated(tmp_path, hf_llama_dir):
    out = tmp_path / "x.safetensors"
    args = ["--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(out), "--layers", "12"]
    assert convert_weight.main([*args, "--qkv_concat", "False"]) == 0
    assert "model.norm_out.weight" in load_checkpoint(out)
