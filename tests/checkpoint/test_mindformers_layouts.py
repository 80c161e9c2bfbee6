"""`load_checkpoint` paths laid out as MindFormers lays them out (its `trainer/utils.py` `load_ckpt`)."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from torchformers.checkpoint import CheckpointError, save_checkpoint
from torchformers.checkpoint.loader import last_checkpoint, read_weights, resolve_weights_path

A = {"a.weight": torch.arange(6.0).reshape(2, 3)}
B = {"b.weight": torch.ones(4)}


def _touch(path, mtime):
    os.utime(path, ns=(mtime, mtime))


def test_a_ckpt_file_and_a_bare_name_that_gets_ckpt_appended(tmp_path):
    save_checkpoint(A, tmp_path / "llama_tiny.ckpt")
    assert torch.equal(read_weights(tmp_path / "llama_tiny.ckpt")["a.weight"], A["a.weight"])
    assert resolve_weights_path(tmp_path / "llama_tiny") == tmp_path / "llama_tiny.ckpt"
    assert torch.equal(read_weights(tmp_path / "llama_tiny")["a.weight"], A["a.weight"])
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "other")


def test_a_folder_of_ckpt_files_is_read_whole(tmp_path):
    save_checkpoint(A, tmp_path / "part1.ckpt")
    save_checkpoint(B, tmp_path / "part2.ckpt")
    state = read_weights(tmp_path)
    assert set(state) == {"a.weight", "b.weight"}


def test_a_folder_of_ckpt_files_that_repeat_names_is_an_error_not_a_guess(tmp_path):
    save_checkpoint(A, tmp_path / "llama_rank_0-1_2.ckpt")
    save_checkpoint(A, tmp_path / "llama_rank_0-1_4.ckpt")
    with pytest.raises(CheckpointError, match="appears twice.*rank_N"):
        read_weights(tmp_path)


def test_rank_folders_take_the_newest_ckpt_by_mtime_not_by_name(tmp_path):
    older = {"a.weight": torch.zeros(2, 3)}
    for rank in (0, 1):
        folder = tmp_path / f"rank_{rank}"
        folder.mkdir()
        save_checkpoint(older, folder / f"llama_rank_{rank}-2_8.ckpt")
        save_checkpoint(A, folder / f"llama_rank_{rank}-1_4.ckpt")  # newer by mtime, older by name
        _touch(folder / f"llama_rank_{rank}-2_8.ckpt", 1_000_000_000_000_000_000)
        _touch(folder / f"llama_rank_{rank}-1_4.ckpt", 1_000_000_100_000_000_000)
    assert last_checkpoint(tmp_path / "rank_1") == tmp_path / "rank_1" / "llama_rank_1-1_4.ckpt"
    assert resolve_weights_path(tmp_path) == tmp_path / "rank_0" / "llama_rank_0-1_4.ckpt"
    assert resolve_weights_path(tmp_path, rank=1) == tmp_path / "rank_1" / "llama_rank_1-1_4.ckpt"
    assert resolve_weights_path(tmp_path, rank=5) == tmp_path / "rank_0" / "llama_rank_0-1_4.ckpt"
    assert torch.equal(read_weights(tmp_path)["a.weight"], A["a.weight"])


def test_an_empty_rank_folder_says_what_was_expected(tmp_path):
    (tmp_path / "rank_0").mkdir()
    with pytest.raises(CheckpointError, match="no .ckpt file"):
        read_weights(tmp_path)


def test_save_pretrained_folders_origin_and_experimental_and_sharded(tmp_path):
    # origin mode: mindspore_model.ckpt + mindspore_model.yaml
    origin = tmp_path / "origin"
    origin.mkdir()
    save_checkpoint({**A, **B}, origin / "mindspore_model.ckpt")
    (origin / "mindspore_model.yaml").write_text("model:\n  arch:\n    type: LlamaForCausalLM\n")
    assert set(read_weights(origin)) == {"a.weight", "b.weight"}
    # experimental mode, sharded: config.json + mindspore_model-0000k-of-00002.ckpt + the index
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_checkpoint(A, sharded / "mindspore_model-00001-of-00002.ckpt")
    save_checkpoint(B, sharded / "mindspore_model-00002-of-00002.ckpt")
    (sharded / "config.json").write_text("{}")
    (sharded / "mindspore_model.ckpt.index.json").write_text(
        '{"metadata": {"total_size": 40}, "weight_map": {"a.weight": "mindspore_model-00001-of-00002.ckpt",'
        ' "b.weight": "mindspore_model-00002-of-00002.ckpt"}}'
    )
    state = read_weights(sharded)
    assert set(state) == {"a.weight", "b.weight"} and torch.equal(state["b.weight"], B["b.weight"])
    assert set(read_weights(sharded / "mindspore_model.ckpt.index.json")) == {"a.weight", "b.weight"}


def test_the_trainer_loads_a_rank_folder_and_a_bare_name(tmp_path, predict_config):
    from torchformers.trainer import CausalLanguageModelingTrainer

    full = Path(__file__).parent / "fixtures" / "sliced" / "full.ckpt"
    for rank in (0, 1):
        (tmp_path / "run" / f"rank_{rank}").mkdir(parents=True)
        shutil.copy(full, tmp_path / "run" / f"rank_{rank}" / f"llama_rank_{rank}-1_2.ckpt")
    shutil.copy(full, tmp_path / "llama_tiny.ckpt")
    trainer = CausalLanguageModelingTrainer()
    reference = read_weights(full)["lm_head.weight"]
    for load in (tmp_path / "run", tmp_path / "llama_tiny"):
        model = trainer.build_network(predict_config(load))
        assert torch.equal(model.lm_head.weight.detach(), reference), load
