"""The migration guide's command, as written, with a 2-layer Llama-3-shaped `.ckpt` and the real Llama 3
tokenizer:

    python run_mindformer.py --config research/llama3_1/predict_llama3_1_8b.yaml \
        --load_checkpoint path/to/llama3_1_8b.ckpt --register_path research/llama3_1 --predict_data "hello"

plus overrides that shrink the model and point `vocab_file` at the tokenizer. The generated text is
checked against Hugging Face transformers' greedy generation with the same weights, tokenized and
decoded by tiktoken directly.
"""

from __future__ import annotations

import ast
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchformers.checkpoint import save_checkpoint
from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.tools.assets import fetch

transformers = pytest.importorskip("transformers")
tiktoken = pytest.importorskip("tiktoken")

REPO = Path(__file__).resolve().parents[2]
SEED_COMMAND = [
    "run_mindformer.py",
    "--config", "research/llama3_1/predict_llama3_1_8b.yaml",
    "--load_checkpoint", "path/to/llama3_1_8b.ckpt",
    "--register_path", "research/llama3_1",
    "--predict_data", "hello",
]  # fmt: skip
SHRINK = {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "n_kv_heads": 2, "intermediate_size": 128}
MAX_LENGTH = 12  # max_decode_length: prompt + generated tokens


def hf_model(dtype=torch.float32):
    """A random Llama 3.1 shaped model (2 layers, hidden 64) with the YAML's RoPE (llama3 scaling)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128256,
        hidden_size=SHRINK["hidden_size"],
        intermediate_size=SHRINK["intermediate_size"],
        num_hidden_layers=SHRINK["num_layers"],
        num_attention_heads=SHRINK["num_heads"],
        num_key_value_heads=SHRINK["n_kv_heads"],
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
        pad_token_id=128002,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a wide spread, so greedy choices are not near-ties
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.2)
    return model.to(dtype)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding path/to/llama3_1_8b.ckpt (native MindFormers names, MindSpore .ckpt format)."""
    folder = tmp_path_factory.mktemp("seed")
    model = hf_model()
    native = {LLAMA_HF_KEY_MAP.to_native(k): v for k, v in model.state_dict().items()}
    (folder / "path/to").mkdir(parents=True)
    save_checkpoint(native, folder / "path/to/llama3_1_8b.ckpt")
    (folder / "run_mindformer.py").symlink_to(REPO / "run_mindformer.py")
    return folder, model


def shrink_args(**extra) -> list[str]:
    values = {**SHRINK, "max_decode_length": MAX_LENGTH, **extra}
    return [a for k, v in values.items() for a in (f"--model.model_config.{k}", str(v))]


def expected_text(model) -> str:
    """Greedy continuation of "hello" by transformers, decoded with tiktoken (special tokens skipped)."""
    ranks = {}
    for line in fetch("llama3/tokenizer.model").read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding("llama3", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    prompt = enc.encode("hello")  # one word: the split pattern does not matter; no BOS (Llama3Tokenizer's default)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_length=MAX_LENGTH, do_sample=False, eos_token_id=128001, pad_token_id=128002
        )[0].tolist()
    return enc.decode([i for i in out if i < len(ranks)], errors="replace")


def test_seed_command_runs_as_written(workdir):
    folder, model = workdir
    vocab = ["--processor.tokenizer.vocab_file", str(fetch("llama3/tokenizer.model"))]
    cpu = ["--model.model_config.compute_dtype", "float32", "--model.model_config.param_init_type", "float32"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("REGISTER_PATH", None)
    result = subprocess.run(
        [sys.executable, *SEED_COMMAND, *vocab, *shrink_args(), *cpu],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = ast.literal_eval((folder / "text_generation_result.txt").read_text(encoding="utf-8"))
    text = saved[0]["text_generation_text"][0]
    assert text.startswith("hello") and len(text) > len("hello")
    assert text == expected_text(model)


def test_seed_command_in_the_yamls_bfloat16(workdir, monkeypatch, clean_register_env):
    """Without dtype overrides the YAML's bfloat16 weights and compute run too (in-process launcher)."""
    from torchformers.cli import main

    folder, _ = workdir
    monkeypatch.chdir(folder)
    vocab = ["--processor.tokenizer.vocab_file", str(fetch("llama3/tokenizer.model"))]
    assert main([*SEED_COMMAND[1:], *vocab, *shrink_args()]) == 0
    saved = ast.literal_eval((folder / "text_generation_result.txt").read_text(encoding="utf-8"))
    assert saved[0]["text_generation_text"][0].startswith("hello")


def test_vocab_file_placeholder_fails_with_the_key_named(workdir, monkeypatch, clean_register_env, capsys):
    from torchformers.cli import main

    folder, _ = workdir
    monkeypatch.chdir(folder)
    assert main([*SEED_COMMAND[1:], *shrink_args()]) == 2
    err = capsys.readouterr().err
    assert "vocab_file '/path/tokenizer.json'" in err and "Llama3Tokenizer" in err
