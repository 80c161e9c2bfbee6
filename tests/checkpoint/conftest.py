"""A tiny random Hugging Face Llama saved with `save_pretrained`, shared by the checkpoint tests."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_state(hf_llama_dir):
    from safetensors.torch import load_file

    return load_file(str(hf_llama_dir / "model.safetensors"))


def _predict_config(load_checkpoint, **extra):
    """A tiny predict config (vocab 64, hidden 16, 4 heads, 2 kv heads, 2 layers) loading `load_checkpoint`."""
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


@pytest.fixture
def predict_config():
    return _predict_config
