"""`python -m torchformers.tools.transform_ckpt_lora`: adapters folded into plain weights, W + B A * alpha/rank."""

import torch
from safetensors.torch import load_file, save_file

from torchformers.tools.transform_ckpt_lora import main


def test_merges_adapters_with_the_yaml_scaling(tmp_path):
    g = torch.Generator().manual_seed(0)
    w, a, b = (torch.randn(s, generator=g) for s in ((6, 4), (2, 4), (6, 2)))
    other = torch.randn(3, generator=g)
    src = tmp_path / "run.safetensors"
    save_file({"layer.wq.weight": w, "layer.wq.mindpet_delta_lora_a": a, "layer.wq.mindpet_delta_lora_b": b,
               "norm.weight": other}, str(src))  # fmt: skip
    yaml = tmp_path / "lora.yaml"
    yaml.write_text(
        "model:\n  arch: {type: LlamaForCausalLM}\n  model_config:\n"
        "    pet_config: {pet_type: lora, lora_rank: 2, lora_alpha: 8}\n"
    )
    assert (
        main(["--src_ckpt_path_or_dir", str(src), "--dst_ckpt_dir", str(tmp_path / "out"), "--config", str(yaml)]) == 0
    )
    merged = load_file(str(tmp_path / "out" / "merged_run.safetensors"))
    assert set(merged) == {"layer.wq.weight", "norm.weight"}
    torch.testing.assert_close(merged["layer.wq.weight"], w + (b @ a) * 4.0, rtol=0, atol=1e-6)
    assert torch.equal(merged["norm.weight"], other)


def test_errors_are_one_line(tmp_path, capsys):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    assert main(["--src_ckpt_path_or_dir", str(tmp_path / "plain.safetensors"), "--dst_ckpt_dir", str(tmp_path),
                 "--lora_scaling", "2"]) == 2  # fmt: skip
    assert "no LoRA adapters" in capsys.readouterr().err
    assert (
        main(["--src_ckpt_path_or_dir", str(tmp_path / "none"), "--dst_ckpt_dir", str(tmp_path), "--lora_scaling", "2"])
        == 2
    )
    assert "no such file or folder" in capsys.readouterr().err
