"""Per-rank sliced MindSpore checkpoints merged with their strategy files.

The fixtures (`fixtures/sliced/`, made by `fixtures/make_sliced_ckpt.py` with the real MindSpore 2.9 on
CPU) hold a full tiny-Llama checkpoint and its slices for 4 ranks (data_parallel 2, model_parallel 2,
with and without the parallel optimizer) cut by MindSpore's own `transform_checkpoints`. MindSpore
cannot compile a sharded graph on CPU, so the strategy files were built with MindSpore's protobuf
message class (`mindspore.train.node_strategy_pb2.ParallelStrategyMap`) rather than saved by a run.
"""

import json
from pathlib import Path

import pytest
import torch

from torchformers.checkpoint import CheckpointError, save_checkpoint
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


def test_pipeline_stages_each_param_merged_from_the_ranks_that_hold_it(tmp_path):
    # 2 stages of 2 ranks: stage 0 holds `a` (rows split over 2), stage 1 holds `b` (columns split over 2);
    # a JSON strategy file, as MindSpore writes with strategy_ckpt_config save_file *.json
    a, b = torch.randn(4, 3), torch.randn(2, 6)
    layouts = {"a": Layout((2,), (0, -1)), "b": Layout((2,), (-1, 0))}
    holders = {0: ("a", 0), 1: ("a", 1), 2: ("b", 0), 3: ("b", 1)}
    for rank, (name, local) in holders.items():
        (tmp_path / f"rank_{rank}").mkdir()
        full = a if name == "a" else b
        save_checkpoint({name: slice_tensor(full, layouts[name], local), "global_step": torch.tensor([3])},
                        tmp_path / f"rank_{rank}" / f"net_rank_{rank}-1_3.ckpt")  # fmt: skip
    items = {n: {"dev_matrix": list(v.dev_matrix), "tensor_map": list(v.tensor_map), "tensor_shape": [],
                 "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0} for n, v in layouts.items()}
    (tmp_path / "strategy.json").write_text(json.dumps({"parallel_layout_item": items}))
    merged = merge_sliced_checkpoints(tmp_path, tmp_path / "strategy.json")
    assert torch.equal(merged["a"], a) and torch.equal(merged["b"], b) and merged["global_step"].tolist() == [3]


def test_wrong_rank_count_and_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="2 ranks hold it.*splits it over 4"):
        merge_slices([torch.zeros(2), torch.zeros(2)], Layout((2, 2), (1,)), "w")
    (tmp_path / "bad.ckpt").write_bytes(b"\xff\xff\xff")
    with pytest.raises(CheckpointError, match="not a MindSpore strategy file"):
        read_strategy(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="no rank_N/ folders"):
        merge_sliced_checkpoints(tmp_path, FIXTURES / "strategy_dp2_mp2.ckpt")


@pytest.mark.parametrize("tag", TAGS)
def test_auto_trans_ckpt_loads_rank_folders_and_predicts_as_the_full_checkpoint(tag, predict_config):
    from torchformers.trainer import CausalLanguageModelingTrainer

    trainer = CausalLanguageModelingTrainer()
    strategy = FIXTURES / f"strategy_{tag}.ckpt"
    config = predict_config(FIXTURES / tag, auto_trans_ckpt=True, src_strategy_path_or_dir=strategy)
    sliced = trainer.build_network(config)
    whole = trainer.build_network(predict_config(FIXTURES / "full.ckpt"))
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
        trainer.build_network(predict_config(FIXTURES / tag))


_SHARDED_BUILD = """
import sys, torch, torch.distributed as dist
from torchformers.checkpoint.loader import read_weights
from torchformers.parallel import ParallelDims, build_parallel_model
dist.init_process_group("gloo", rank=0, world_size=1)
fixtures = sys.argv[1]
config = {"model_config": {"type": "LlamaConfig", "vocab_size": 64, "hidden_size": 16, "num_layers": 2,
          "num_heads": 4, "n_kv_heads": 2, "intermediate_size": 32, "seq_length": 16, "compute_dtype": "float32",
          "param_init_type": "float32"}, "arch": {"type": "LlamaForCausalLM"}}
model, _ = build_parallel_model(config, ParallelDims(world_size=1), torch.device("cpu"),
                                checkpoint=fixtures + "/dp2_mp2_opt",
                                src_strategy=fixtures + "/strategy_dp2_mp2_opt.ckpt")
full = read_weights(fixtures + "/full.ckpt")
for name, param in model.state_dict().items():
    value = param.full_tensor() if hasattr(param, "full_tensor") else param
    assert torch.equal(value, full[name]), name
dist.destroy_process_group()
print("ok")
"""


def test_a_sharded_build_fills_from_sliced_checkpoints_with_their_strategy(tmp_path):
    import os
    import subprocess
    import sys

    from tests.parallel.test_parallel import _free_port

    repo = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(_free_port())}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _SHARDED_BUILD, str(FIXTURES)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-2000:]
