"""`python -m torchformers.tools.transform_ckpt` against MindSpore's own slicing (fixtures/sliced/)."""

from pathlib import Path

import torch

from torchformers.checkpoint.loader import read_weights
from torchformers.tools.transform_ckpt import main

FIXTURES = Path(__file__).parent / "fixtures" / "sliced"


def test_merge_then_reslice_for_another_strategy_matches_mindspore(tmp_path, capsys):
    full = read_weights(FIXTURES / "full.ckpt")
    merged_dir = tmp_path / "merged"
    rc = main(["--src_checkpoint", str(FIXTURES / "dp2_mp2_opt"), "--src_strategy",
               str(FIXTURES / "strategy_dp2_mp2_opt.ckpt"), "--dst_checkpoint_dir", str(merged_dir)])  # fmt: skip
    assert rc == 0
    merged = read_weights(merged_dir / "rank_0" / "checkpoint_0.ckpt")
    assert all(torch.equal(merged[n], t) for n, t in full.items()) and set(merged) == set(full)
    # reshard: from the optimizer-sharded layout to the plain dp2/mp2 one, as MindSpore sliced it
    resliced = tmp_path / "resliced"
    rc = main(["--src_checkpoint", str(FIXTURES / "dp2_mp2_opt"), "--src_strategy",
               str(FIXTURES / "strategy_dp2_mp2_opt.ckpt"), "--dst_checkpoint", str(resliced),
               "--dst_strategy", str(FIXTURES / "strategy_dp2_mp2.ckpt"), "--world_size", "4"])  # fmt: skip
    assert rc == 0
    assert "--world_size has no effect" in capsys.readouterr().err
    for rank in range(4):
        ours = read_weights(resliced / f"rank_{rank}" / f"checkpoint_{rank}.ckpt")
        theirs = read_weights(FIXTURES / "dp2_mp2" / f"rank_{rank}" / f"checkpoint_{rank}.ckpt")
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[n], theirs[n]) for n in theirs), rank


def test_a_missing_strategy_is_a_one_line_error(tmp_path, capsys):
    rc = main(["--src_checkpoint", str(FIXTURES / "dp2_mp2"), "--src_strategy", str(tmp_path / "nope"),
               "--dst_checkpoint_dir", str(tmp_path / "out")])  # fmt: skip
    assert rc == 2 and "--src_strategy" in capsys.readouterr().err


def test_reslicing_for_pipeline_stages_is_refused(tmp_path, capsys):
    from torchformers.checkpoint.ms_strategy import ParallelStrategyMap

    message = ParallelStrategyMap()
    message.ParseFromString((FIXTURES / "strategy_dp2_mp2.ckpt").read_bytes())
    for index, item in enumerate(message.parallel_layout_item):  # a merged file of 2 stages
        item.param_name = f"{index % 2}-{item.param_name}"
    (tmp_path / "pp2.ckpt").write_bytes(message.SerializeToString())
    rc = main(["--src_checkpoint", str(FIXTURES / "full.ckpt"), "--dst_checkpoint_dir", str(tmp_path / "out"),
               "--dst_strategy", str(tmp_path / "pp2.ckpt")])  # fmt: skip
    assert rc == 2 and "2 pipeline stages" in capsys.readouterr().err
