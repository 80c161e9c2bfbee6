"""A tiny random Hugging Face Llama saved with `save_pretrained`, shared by the checkpoint tests."""

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
