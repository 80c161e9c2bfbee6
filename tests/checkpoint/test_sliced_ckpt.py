"""Per-rank sliced MindSpore checkpoints merged with their strategy files.

The fixtures (`fixtures/sliced/`, made by `fixtures/make_sliced_ckpt.py` with the real MindSpore 2.9 on
CPU) hold a full tiny-Llama checkpoint and its slices for 4 ranks (data_parallel 2, model_parallel 2,
with and without the parallel optimizer) cut by MindSpore's own `transform_checkpoints`. MindSpore
cannot compile a sharded graph on CPU, so the strategy files were built with MindSpore's protobuf
message class (`mindspore.train.node_strategy_pb2.ParallelStrategyMap`) rather than saved by a run.
"""

from pathlib import Path

import pytest
import torch

from torchformers.checkpoint import CheckpointError
from torchformers.checkpoint.loader import merge_sliced_checkpoints, read_weights
from torchformers.checkpoint.ms_strategy import Layout, ParallelStrategyMap, merge_slices, read_strategy, slice_tensor

FIXTURES = Path(__file__).parent / "fixtures" / "sliced"
TAGS = ["dp2_mp2", "dp2_mp2_opt"]


@pytest.fixture(scope="module")
def full():
    return read_weights(FIXTURES / "full.ckpt")


@pytest.mark.parametrize("tag", TAGS)
def test_merging_mindspores_slices_gives_the_full_checkpoint(tag, full):
    merged = merge_sliced_checkpoints(FIXTURES / tag, FIXTURES / f"strategy_{tag}.ckpt")
    assert list(merged) == list(full)
    for name, tensor in full.items():
        assert merged[name].dtype == tensor.dtype and torch.equal(merged[name], tensor), name
    # the slices really are slices: rank 0 holds less than the whole of a column-parallel weight
    rank0 = read_weights(FIXTURES / tag / "rank_0" / "checkpoint_0.ckpt")
    assert rank0["model.layers.0.attention.wq.weight"].shape[0] < full["model.layers.0.attention.wq.weight"].shape[0]


@pytest.mark.parametrize("tag", TAGS)
def test_our_slicing_equals_mindspores(tag, full):
    layouts = read_strategy(FIXTURES / f"strategy_{tag}.ckpt")
    for rank in range(4):
        theirs = read_weights(FIXTURES / tag / f"rank_{rank}" / f"checkpoint_{rank}.ckpt")
        for name, layout in layouts.items():
            assert torch.equal(slice_tensor(full[name], layout, rank, name), theirs[name]), (name, rank)


def test_read_strategy_reads_mindspores_fields():
    layouts = read_strategy(FIXTURES / "strategy_dp2_mp2_opt.ckpt")
    assert layouts["model.layers.1.attention.wo.weight"] == Layout((2, 1, 2), (1, 0), 2, 2)
    assert layouts["model.norm_out.weight"] == Layout((4,), (-1,), 4, 1)


def test_a_strategy_folder_and_a_merged_pipeline_file_with_stage_prefixes(tmp_path, full):
    data = (FIXTURES / "strategy_dp2_mp2.ckpt").read_bytes()
    folder = tmp_path / "strategy"
    folder.mkdir()
    for rank in range(4):
        (folder / f"ckpt_strategy_rank_{rank}.ckpt").write_bytes(data)
    assert read_strategy(folder) == read_strategy(FIXTURES / "strategy_dp2_mp2.ckpt")
    message = ParallelStrategyMap()
    message.ParseFromString(data)
    for item in message.parallel_layout_item:  # as mindspore.merge_pipeline_strategys names them
        item.param_name = "0-" + item.param_name
    (tmp_path / "merged.ckpt").write_bytes(message.SerializeToString())
    merged = merge_sliced_checkpoints(FIXTURES / "dp2_mp2", tmp_path / "merged.ckpt")
    assert all(torch.equal(merged[n], t) for n, t in full.items())


def test_read_weights_with_a_strategy_merges(full):
    state = read_weights(FIXTURES / "dp2_mp2", src_strategy=FIXTURES / "strategy_dp2_mp2.ckpt")
    assert torch.equal(state["lm_head.weight"], full["lm_head.weight"])


def test_pipeline_stages_each_param_merged_from_the_ranks_that_hold_it():
    # 2 stages of 2 ranks: stage 0 holds `a` (split over 2), stage 1 holds `b` (split over 2)
    layout = Layout((2,), (0, -1))
    a, b = torch.randn(4, 3), torch.randn(6, 2)
    pieces = {0: {"a": slice_tensor(a, layout, 0)}, 1: {"a": slice_tensor(a, layout, 1)},
              2: {"b": slice_tensor(b, layout, 0)}, 3: {"b": slice_tensor(b, layout, 1)}}  # fmt: skip
    assert torch.equal(merge_slices([pieces[0]["a"], pieces[1]["a"]], layout), a)
    assert torch.equal(merge_slices([pieces[2]["b"], pieces[3]["b"]], layout), b)


def test_wrong_rank_count_and_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="2 ranks hold it.*splits it over 4"):
        merge_slices([torch.zeros(2), torch.zeros(2)], Layout((2, 2), (1,)), "w")
    (tmp_path / "bad.ckpt").write_bytes(b"\xff\xff\xff")
    with pytest.raises(CheckpointError, match="not a MindSpore strategy file"):
        read_strategy(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="no rank_N/ folders"):
        merge_sliced_checkpoints(tmp_path, FIXTURES / "strategy_dp2_mp2.ckpt")


def _predict_config(load_checkpoint, **extra):
    from torchformers.cli import config_from_args

    yaml = Path(__file__).parents[2] / "configs" / "tiny" / "predict_llama_tiny.yaml"
    sizes = {"vocab_size": 64, "hidden_size": 16, "num_heads": 4, "n_kv_heads": 2, "intermediate_size": 32,
             "num_layers": 2, "seq_length": 16, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
             "tie_word_embeddings": False}  # fmt: skip
    argv = ["--config", str(yaml), "--run_mode", "predict", "--load_checkpoint", str(load_checkpoint)]
    for key, value in sizes.items():
        argv += [f"--model.model_config.{key}", str(value)]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return config_from_args(argv)


@pytest.mark.parametrize("tag", TAGS)
def test_auto_trans_ckpt_loads_rank_folders_and_predicts_as_the_full_checkpoint(tag):
    from torchformers.trainer import CausalLanguageModelingTrainer

    trainer = CausalLanguageModelingTrainer()
    strategy = FIXTURES / f"strategy_{tag}.ckpt"
    config = _predict_config(FIXTURES / tag, auto_trans_ckpt=True, src_strategy_path_or_dir=strategy)
    sliced = trainer.build_network(config)
    whole = trainer.build_network(_predict_config(FIXTURES / "full.ckpt"))
    for model in (sliced, whole):
        model.eval()
    ids = torch.tensor([[1, 5, 9, 33, 7]])
    with torch.no_grad():
        assert torch.equal(sliced(ids), whole(ids))
    out_sliced = sliced.generate(ids, max_new_tokens=6, do_sample=False)
    out_whole = whole.generate(ids, max_new_tokens=6, do_sample=False)
    assert [list(map(int, row)) for row in out_sliced] == [list(map(int, row)) for row in out_whole]
    # without auto_trans_ckpt the rank folder gives rank 0's slice, which does not fit the model
    with pytest.raises(CheckpointError, match="different shape"):
        trainer.build_network(_predict_config(FIXTURES / tag))
