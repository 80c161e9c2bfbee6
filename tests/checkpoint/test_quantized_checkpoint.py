"""Quantized checkpoints: `convert_weight.py --quantize`, loading them through the launcher's model
builder, `--quantization` on the launcher, and quantized training refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchformers.checkpoint.loader import load_weights, read_weights
from torchformers.errors import ConfigError
from torchformers.generation.quantization import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    QuantizationSettings,
    quantization_of_file,
    quantize_model,
)
from torchformers.models import LlamaConfig, LlamaForCausalLM

TINY = Path(__file__).parents[2] / "configs" / "tiny" / "predict_llama_tiny.yaml"
IDS = torch.tensor([[3, 17, 42, 5, 60, 9], [1, 2, 33, 44, 55, 63]])


def _config(load_checkpoint: Path | None, *extra: str, run_mode: str = "predict"):
    """The tiny predict YAML sized like the `hf_llama_dir` model."""
    from torchformers.cli import config_from_args

    sizes = {"vocab_size": 64, "hidden_size": 32, "num_heads": 4, "n_kv_heads": 2, "intermediate_size": 48,
             "num_layers": 2, "seq_length": 16, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}  # fmt: skip
    argv = ["--config", str(TINY), "--run_mode", run_mode, *extra]
    if load_checkpoint is not None:
        argv += ["--load_checkpoint", str(load_checkpoint)]
    for key, value in sizes.items():
        argv += [f"--model.model_config.{key}", str(value)]
    return config_from_args(argv)


def _float_model(hf_llama_dir: Path, launcher: bool = False) -> LlamaForCausalLM:
    """The float model from the Hugging Face folder, built as the launcher builds it or from its config.json."""
    if launcher:
        from torchformers.trainer.base_trainer import CausalLanguageModelingTrainer

        return CausalLanguageModelingTrainer().build_network(_config(hf_llama_dir / "model.safetensors")).eval()
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(hf_llama_dir)).eval()
    load_weights(model, hf_llama_dir)
    return model


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_convert_weight_quantize_then_load_gives_the_in_memory_quantized_model(method, tmp_path, hf_llama_dir):
    import convert_weight
    from torchformers.trainer.base_trainer import CausalLanguageModelingTrainer

    out = tmp_path / f"{method}.safetensors"
    args = ["--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(out), "--quantize", method]
    assert convert_weight.main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # the float intermediate is gone
    settings = quantization_of_file(out)
    assert settings == QuantizationSettings(method, 32, None, (), method)
    state = read_weights(out)
    layer = Int4WeightOnlyLinear if method == "int4" else Int8WeightOnlyLinear
    expected = quantize_model(_float_model(hf_llama_dir), settings)
    assert state.keys() == expected.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in expected.state_dict().items())

    # the launcher's builder reads the settings from the file: no quantization_config needed
    model = CausalLanguageModelingTrainer().build_network(_config(out))
    assert isinstance(model.model.layers[0].attention.wq, layer)
    expected = quantize_model(_float_model(hf_llama_dir, launcher=True), settings)
    with torch.no_grad():
        assert torch.equal(model(IDS), expected(IDS))


def test_convert_weight_quantize_needs_safetensors_output(tmp_path, hf_llama_dir, capsys):
    import convert_weight

    args = ["--model", "llama", "--input_path", str(hf_llama_dir), "--output_path", str(tmp_path / "q.ckpt"),
            "--quantize", "int8"]  # fmt: skip
    assert convert_weight.main(args) == 2
    assert ".safetensors" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_launcher_quantization_flag_quantizes_a_float_checkpoint(tmp_path, hf_llama_dir):
    from torchformers.trainer.base_trainer import CausalLanguageModelingTrainer

    config = _config(hf_llama_dir / "model.safetensors", "--quantization", "int4")
    assert config.get_value("model.model_config.quantization_config") == {"quant_method": "int4"}
    model = CausalLanguageModelingTrainer().build_network(config)
    assert isinstance(model.lm_head, Int4WeightOnlyLinear)
    expected = quantize_model(_float_model(hf_llama_dir, True), QuantizationSettings("int4", quant_method="int4"))
    with torch.no_grad():
        assert torch.equal(model(IDS), expected(IDS))


def test_quantized_training_is_refused_in_one_line(hf_llama_dir, capsys):
    from torchformers.cli import main
    from torchformers.trainer.base_trainer import CausalLanguageModelingTrainer

    config = _config(hf_llama_dir / "model.safetensors", "--quantization", "int8", run_mode="finetune")
    with pytest.raises(ConfigError, match="quantizes for inference; run_mode finetune"):
        CausalLanguageModelingTrainer().build_network(config)
    argv = ["--config", str(TINY), "--run_mode", "finetune", "--quantization", "int8",
            "--load_checkpoint", str(hf_llama_dir / "model.safetensors")]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "quantizes for inference; run_mode finetune" in err and "Traceback" not in err
