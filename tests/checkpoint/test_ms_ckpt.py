"""MindSpore .ckpt: our writer against protobuf's parser, protobuf-built files against our reader."""

import zlib

import pytest
import torch

from torchformers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from torchformers.checkpoint.ms_ckpt import CkptWriter, iter_ckpt, read_ckpt_specs
from torchformers.checkpoint.ms_ckpt_proto import Checkpoint

MIXED = {
    "model.layers.0.attention.wq.weight": torch.randn(6, 4),
    "model.tok_embeddings.embedding_weight": torch.randn(10, 4).to(torch.bfloat16),
    "half": torch.randn(3).to(torch.float16),
    "adam_m.model.norm_out.weight": torch.randn(4, dtype=torch.float64),
    "global_step": torch.tensor(7, dtype=torch.int64),
    "flags": torch.tensor([True, False, True]),
    "ids": torch.arange(5, dtype=torch.int32),
    "empty": torch.empty(0, 3),
}


def _parse(data: bytes):
    message = Checkpoint()
    message.ParseFromString(data)
    return message


def test_written_ckpt_parses_with_protobuf_schema(tmp_path):
    path = tmp_path / "x.ckpt"
    save_checkpoint(MIXED, path)
    values = _parse(path.read_bytes()).value
    assert [v.tag for v in values] == list(MIXED)
    for value, (name, tensor) in zip(values, MIXED.items()):
        assert list(value.tensor.dims) == list(tensor.shape), name
        assert value.tensor.tensor_content == tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    types = {v.tag: v.tensor.tensor_type for v in values}
    assert types["model.tok_embeddings.embedding_weight"] == "BFloat16"
    assert types["global_step"] == "Int64" and types["half"] == "Float16" and types["flags"] == "Bool"
    assert list(values[4].tensor.dims) == []  # scalar


def test_mindformers_names_come_back_exactly(tmp_path):
    path = tmp_path / "x.ckpt"
    save_checkpoint(MIXED, path)
    loaded = load_checkpoint(path)
    assert list(loaded) == list(MIXED)
    for name, tensor in MIXED.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_split_tensor_and_crc_written_by_us(tmp_path):
    path = tmp_path / "split.ckpt"
    weight = torch.randn(5, 7)
    with CkptWriter(path, crc=True, chunk_bytes=32) as writer:
        writer.write("w", weight)
        writer.write("b", torch.ones(2))
    data = path.read_bytes()
    assert data[-17:-10] == b"crc_num" and int.from_bytes(data[-10:], "big") == zlib.crc32(data[:-17])
    values = _parse(data[:-17]).value
    assert [v.tag for v in values].count("w") == 5  # 140 bytes in chunks of 32
    assert all(list(v.tensor.dims) == [5, 7] for v in values if v.tag == "w")
    out = dict(iter_ckpt(path))
    assert torch.equal(out["w"], weight) and torch.equal(out["b"], torch.ones(2))


def _hand_built(tmp_path, *, crc: bool):
    """A file built only from the protobuf schema, the MindSpore way: one Checkpoint per chunk, appended."""
    weight = torch.randn(4, 6)
    raw = weight.numpy().tobytes()
    parts = []
    for start in range(0, len(raw), 40):  # a split tensor: 96 bytes in 40-byte chunks
        message = Checkpoint()
        value = message.value.add(tag="layer.weight")
        value.tensor.dims.extend([4, 6])
        value.tensor.tensor_type = "Float32"
        value.tensor.tensor_content = raw[start : start + 40]
        parts.append(message.SerializeToString())
    message = Checkpoint()
    value = message.value.add(tag="step_num")
    value.tensor.tensor_type = "Int64"  # scalar: dims []
    value.tensor.tensor_content = (12).to_bytes(8, "little")
    parts.append(message.SerializeToString())
    message = Checkpoint()
    value = message.value.add(tag="note")  # strings are skipped: they are not parameters
    value.tensor.dims.append(0)
    value.tensor.tensor_type = "str"
    value.tensor.tensor_content = "hi".encode("utf-32-le")
    parts.append(message.SerializeToString())
    data = b"".join(parts)
    if crc:
        data += b"crc_num" + zlib.crc32(data).to_bytes(10, "big")
    path = tmp_path / "hand.ckpt"
    path.write_bytes(data)
    return path, weight


@pytest.mark.parametrize("crc", [False, True])
def test_hand_built_ckpt_loads(tmp_path, crc):
    path, weight = _hand_built(tmp_path, crc=crc)
    loaded = load_checkpoint(path)
    assert list(loaded) == ["layer.weight", "step_num"]
    assert torch.equal(loaded["layer.weight"], weight)
    assert loaded["step_num"].shape == () and loaded["step_num"].item() == 12
    assert read_ckpt_specs(path) == {"layer.weight": (torch.float32, (4, 6)), "step_num": (torch.int64, ())}


def test_crc_mismatch_is_reported(tmp_path):
    path, _ = _hand_built(tmp_path, crc=True)
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the tensor content: the protobuf framing still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path}.*crc32 check failed"):
        load_checkpoint(path)


def test_truncated_ckpt_names_file_and_tensor(tmp_path):
    path = tmp_path / "t.ckpt"
    save_checkpoint({"a": torch.randn(4), "model.norm_out.weight": torch.randn(64)}, path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match=rf"{path}, tensor 'model.norm_out.weight': file is truncated"):
        load_checkpoint(path)


def test_corrupted_ckpt_is_reported(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint({"a": torch.randn(4)}, path)
    data = bytearray(path.read_bytes())
    data[1] = 0x7F  # the Value length no longer matches the file
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}.*(corrupted|truncated)"):
        load_checkpoint(path)


def test_unknown_tensor_type_is_reported(tmp_path):
    message = Checkpoint()
    value = message.value.add(tag="w")
    value.tensor.dims.append(2)
    value.tensor.tensor_type = "Complex64"
    value.tensor.tensor_content = b"\0" * 16
    path = tmp_path / "u.ckpt"
    path.write_bytes(message.SerializeToString())
    with pytest.raises(CheckpointError, match=r"tensor 'w': unknown tensor_type 'Complex64'"):
        load_checkpoint(path)
