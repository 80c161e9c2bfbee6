"""Qwen2 built by following the guide as external code (research/qwen2): logits and greedy generation
match transformers' Qwen2ForCausalLM on tiny random configs; the tokenizer rebuilt from llama.cpp's
ggml-vocab-qwen2.gguf passes llama.cpp's reference vectors and matches transformers' Qwen2Tokenizer;
the classes reach the registry only through auto_register, and the library's conversion tools learn
Qwen2's names (key map, GGUF architecture, pre-tokenizer, vocabulary assets) only from the research
modules: nothing under torchformers/ names Qwen2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tokenizers.helpers import random_unicode_strings, reference_vectors
from torchformers.checkpoint import load_checkpoint, save_checkpoint
from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.tools.assets import fetch
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.register import import_module_from_folder

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
QWEN2 = REPO / "research" / "qwen2"


@pytest.fixture(scope="module")
def qwen2():
    """The research modules, imported the way auto_register imports them."""
    config = import_module_from_folder(QWEN2, "qwen2_config")
    model = import_module_from_folder(QWEN2, "qwen2_model")
    tokenizer = import_module_from_folder(QWEN2, "qwen2_tokenizer")
    return config, model, tokenizer


BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def build_pair(qwen2, tied: bool, seed: int = 0):
    config_mod, model_mod, _ = qwen2
    torch.manual_seed(seed)
    hf_config = transformers.Qwen2Config(**BASE, tie_word_embeddings=tied)
    hf = transformers.Qwen2ForCausalLM(hf_config).eval()
    with torch.no_grad():  # larger spread than HF's init, biases included, so differences would show
        for name, p in hf.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.15)
    ours = model_mod.Qwen2ForCausalLM(config_mod.Qwen2Config(**hf_config.to_dict())).eval()
    report = ours.load_checkpoint(hf.state_dict())
    assert report.ok and report.renamed_from_hf
    return hf, ours


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_logits_match_transformers(qwen2, tied):
    hf, ours = build_pair(qwen2, tied)
    c = ours.config
    assert (c.qkv_has_bias, c.attn_proj_has_bias, c.theta, c.tie_word_embeddings) == (True, False, 1e6, tied)
    assert ours.model.layers[0].attention.wq.bias is not None and ours.model.layers[0].attention.wo.bias is None
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    ids = torch.randint(3, BASE["vocab_size"], (2, 24))
    with torch.no_grad():
        expected, got = hf(ids).logits, ours(ids)
    assert (got - expected).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(qwen2):
    hf, ours = build_pair(qwen2, tied=True, seed=1)
    prompt = torch.randint(3, BASE["vocab_size"], (1, 7))
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = ours.generate(prompt[0].tolist(), max_new_tokens=12, do_sample=False, eos_token_id=[])
    got = got[0] if isinstance(got[0], (list, tuple)) or hasattr(got[0], "tolist") else got
    assert list(map(int, got)) == expected[0].tolist()


def test_wrong_config_class_and_sliding_window_are_refused(qwen2):
    config_mod, model_mod, _ = qwen2
    from torchformers.models import LlamaConfig
    from torchformers.models.configuration_utils import ConfigError

    with pytest.raises(TypeError, match="expected a Qwen2Config"):
        model_mod.Qwen2ForCausalLM(LlamaConfig(num_layers=1, hidden_size=16, num_heads=2, vocab_size=8))
    with pytest.raises(ConfigError, match="use_sliding_window"):
        config_mod.Qwen2Config(use_sliding_window=True)


@pytest.fixture(scope="module")
def gguf_tokenizer(qwen2):
    return qwen2[2].Qwen2Tokenizer(vocab_file=str(fetch("vocab/ggml-vocab-qwen2.gguf")))


def test_tokenizer_passes_llama_cpp_reference_vectors(gguf_tokenizer):
    vectors = reference_vectors("qwen2")
    got = gguf_tokenizer([t for t, _ in vectors], add_special_tokens=False)["input_ids"]
    for (text, expected), ids in zip(vectors, got):
        assert ids == expected, repr(text)


def test_tokenizer_facts(gguf_tokenizer):
    tok = gguf_tokenizer
    assert len(tok) == 151936
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643, 151644, 151645,
    ]  # fmt: skip
    assert tok.bos_token is None and tok.encode("Hello") == tok.encode("Hello", add_special_tokens=False)
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]  # digits one by one
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(chat)
    assert ids.count(151644) == 3 and ids.count(151645) == 2  # special tokens are split out, not spelled


def test_tokenizer_matches_transformers_on_random_text(gguf_tokenizer, qwen2, tmp_path):
    """transformers' own Qwen2 tokenizer definition over the same vocabulary and merges; the same files
    also load through vocab.json + merges.txt."""
    backend = json.loads(gguf_tokenizer.backend_tokenizer.to_str())
    vocab = {t: i for t, i in backend["model"]["vocab"].items() if i < 151643}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in backend["model"]["merges"]]
    reference = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    from_files = qwen2[2].Qwen2Tokenizer(
        vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt")
    )
    texts = random_unicode_strings(200, seed=7) + [t for t, _ in reference_vectors("qwen2")]
    expected = [reference(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert gguf_tokenizer(texts, add_special_tokens=False)["input_ids"] == expected
    assert from_files(texts, add_special_tokens=False)["input_ids"] == expected


def test_registered_only_through_auto_register(qwen2, monkeypatch):
    # a fresh interpreter: importing the library registers no Qwen2 class
    code = (
        "import torchformers; from torchformers.tools.register import MindFormerRegister as R;"
        "print([n for t in R.registry.values() for n in t if 'qwen' in n.lower()])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # no Qwen2 class is defined in the library
    library = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "torchformers").rglob("*.py"))
    assert not re.search(r"class\s+Qwen2|Qwen2Config|Qwen2Tokenizer", library)
    # auto_register with the register path makes them buildable from YAML blocks
    monkeypatch.setenv("REGISTER_PATH", str(QWEN2))
    block = {"type": "Qwen2Config", "auto_register": "qwen2_config.Qwen2Config", "num_layers": 1}
    config = MindFormerRegister.get_instance_from_cfg(block, MindFormerModuleType.CONFIG)
    assert type(config).__name__ == "Qwen2Config" and config.num_layers == 1


def test_library_never_names_qwen():
    """`grep -rni qwen torchformers/` finds nothing: Qwen2 lives in research/qwen2 only."""
    hits = []
    for path in sorted((REPO / "torchformers").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                if b"qwen" in line.lower():
                    hits.append(f"{path.relative_to(REPO)}:{number}: {line.decode(errors='replace').strip()}")
    assert hits == []


def test_conversion_tools_learn_qwen2_from_register_path(qwen2, tmp_path):
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**BASE, tie_word_embeddings=False)).eval()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("q_proj.bias") for k in state)
    save_checkpoint(state, tmp_path / "hf.safetensors")
    vocab = fetch("vocab/ggml-vocab-qwen2.gguf")
    # a fresh interpreter: without --register_path neither --model qwen2 nor a qwen2 GGUF is known
    code = """if True:
        import sys, convert_weight
        from torchformers.checkpoint import CheckpointError
        from torchformers.checkpoint.gguf_io import gguf_config
        args = ["--model", "qwen2", "--input_path", sys.argv[1], "--output_path", sys.argv[2]]
        assert convert_weight.main(args) == 1
        try:
            gguf_config(sys.argv[3])
            raise SystemExit("a qwen2 GGUF was read without registration")
        except CheckpointError as err:
            assert "'qwen2' is not supported (supported: llama)" in str(err) and "register_model_spec" in str(err), err
        assert convert_weight.main([*args, "--register_path", "research/qwen2"]) == 0
        print(gguf_config(sys.argv[3])["architectures"])
    """
    out_path = tmp_path / "native.safetensors"
    argv = [sys.executable, "-c", code, str(tmp_path / "hf.safetensors"), str(out_path), str(vocab)]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--model 'qwen2' has no weight key map" in out.stderr and "--register_path" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['Qwen2ForCausalLM']"
    native = load_checkpoint(out_path)
    assert set(native) == {LLAMA_HF_KEY_MAP.to_native(k) for k in state}
    assert "model.layers.0.attention.wq.bias" in native
    assert all(torch.equal(native[LLAMA_HF_KEY_MAP.to_native(k)], v) for k, v in state.items())


def test_one_spec_registers_the_whole_family(qwen2):
    """research/qwen2 registers everything the library's tools need to know in one ModelSpec."""
    from torchformers.checkpoint.convert import hf_key_map
    from torchformers.checkpoint.gguf_io import gguf_model_spec
    from torchformers.models.gguf_tokenizer import find_pretokenizer
    from torchformers.tools.assets import all_assets

    config_mod, model_mod, tokenizer_mod = qwen2
    spec = MindFormerRegister.get_model_spec("qwen2")
    assert spec is tokenizer_mod.QWEN2_SPEC
    assert spec.config_class is config_mod.Qwen2Config and spec.model_class is model_mod.Qwen2ForCausalLM
    for kind, cls in (
        (MindFormerModuleType.CONFIG, config_mod.Qwen2Config),
        (MindFormerModuleType.MODELS, model_mod.Qwen2ForCausalLM),
        (MindFormerModuleType.TOKENIZER, tokenizer_mod.Qwen2Tokenizer),
    ):
        assert MindFormerRegister.get_cls(kind, cls.__name__) is cls
    assert hf_key_map("qwen2") is LLAMA_HF_KEY_MAP
    assert gguf_model_spec("qwen2") is spec and not spec.gguf.permuted_qk
    assert find_pretokenizer("qwen2").pattern == tokenizer_mod.PRETOKENIZE_REGEX and find_pretokenizer("qwen2").nfc
    assert {f"vocab/ggml-vocab-qwen2.gguf{s}" for s in ("", ".inp", ".out")} <= set(all_assets())
    assert MindFormerRegister.model_spec_of(model_mod.Qwen2ForCausalLM) is spec


def test_registrations_repeat_but_do_not_conflict(qwen2):
    from dataclasses import replace

    from torchformers.tools.register import ModelSpec, RegistryError

    config_mod, model_mod, tokenizer_mod = qwen2
    spec = MindFormerRegister.get_model_spec("qwen2")
    # importing the research modules again (as auto_register may) registers the same family again
    assert MindFormerRegister.register_model_spec(replace(spec)) is not None
    assert MindFormerRegister.get_model_spec("qwen2").gguf == spec.gguf
    MindFormerRegister.register_model_spec(spec)
    # another family under a taken name is refused, naming it
    other = ModelSpec(name="llama", config_class=config_mod.Qwen2Config, model_classes=(model_mod.Qwen2ForCausalLM,))
    with pytest.raises(RegistryError, match="model family 'llama' is already registered"):
        MindFormerRegister.register_model_spec(other)
    assert MindFormerRegister.get_model_spec("llama").config_class.__name__ == "LlamaConfig"


def test_assets_cli_fetches_the_family_assets(tmp_path):
    """`python -m torchformers.tools.assets --register_path research/qwen2 NAME`, and without it the name
    is unknown."""
    fetch("vocab/ggml-vocab-qwen2.gguf")  # cached for the subprocesses
    name = "vocab/ggml-vocab-qwen2.gguf.inp"
    base = [sys.executable, "-m", "torchformers.tools.assets"]
    out = subprocess.run([*base, "--register_path", "research/qwen2", name], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().split(": ", 1)[1])
    assert out.stdout.startswith(f"{name}: ") and path.is_file()
    out = subprocess.run([*base, name], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and f"unknown asset {name!r}" in out.stderr
