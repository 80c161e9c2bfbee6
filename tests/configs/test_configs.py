"""Every YAML in configs/ and research/ loads, builds on the meta device with the published parameter
count, and its training / tokenizer blocks build through the registry; Llama 3's YAML differs from
Llama 2's exactly by the migration guide's list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchformers  # noqa: F401  (registers the library's classes)
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.build import build_callback, build_lr, build_model, build_optim, build_wrapper
from torchformers.tools.register.config import MindFormerConfig, load_yaml

REPO = Path(__file__).resolve().parents[2]
YAMLS = sorted(
    p.relative_to(REPO).as_posix() for p in [*REPO.glob("configs/**/*.yaml"), *REPO.glob("research/**/*.yaml")]
)

# Published parameter counts (the models' Hugging Face safetensors metadata / model cards).
PUBLISHED = {
    "llama2_7b": 6_738_415_616,  # "6.74B"
    "llama2_13b": 13_015_864_320,  # "13.0B"
    "llama2_70b": 68_976_648_192,  # "69.0B"
    "llama3_8b": 8_030_261_248,  # "8.03B"
    "llama3_1_8b": 8_030_261_248,
    "llama3_70b": 70_553_706_496,  # "70.6B"
    "qwen2_0_5b": 494_032_768,
    "qwen2_0_5b_instruct": 494_032_768,
    "qwen2_7b_instruct": 7_615_616_512,
}
ROUNDED = {"llama2_7b": "6.74", "llama2_13b": "13.0", "llama2_70b": "69.0", "llama3_8b": "8.03", "llama3_70b": "70.6"}


def load(path: str, monkeypatch) -> MindFormerConfig:
    # external code: what --register_path does (configs/llama3 use research/llama3_1's Llama3Tokenizer)
    if path.startswith("research/"):
        monkeypatch.setenv("REGISTER_PATH", str(REPO / Path(path).parent))
    elif path.startswith("configs/llama3/"):
        monkeypatch.setenv("REGISTER_PATH", str(REPO / "research/llama3_1"))
    return MindFormerConfig(str(REPO / path))


def expected_count(mc) -> int:
    """Parameter count from the config's numbers alone (Llama layout, optional q/k/v bias, tying)."""
    h, layers, heads, vocab = mc["hidden_size"], mc["num_layers"], mc["num_heads"], mc["vocab_size"]
    kv = mc.get("n_kv_heads") or heads
    hd = h // heads
    ffn = mc.get("intermediate_size")
    if not ffn:  # MindFormers' formula from multiple_of / ffn_dim_multiplier
        f = 4 * h
        if mc.get("ffn_dim_multiplier"):
            f = int((mc["ffn_dim_multiplier"] + 0.01) * f)
        f = int(2 * f / 3)
        multiple = mc.get("multiple_of", 256)
        ffn = multiple * ((f + multiple - 1) // multiple)
    bias = (heads + 2 * kv) * hd if mc.get("qkv_has_bias") else 0
    layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + bias + 3 * h * ffn + 2 * h
    embeddings = vocab * h * (1 if mc.get("tie_word_embeddings") else 2)
    return layers * layer + embeddings + h


@pytest.mark.parametrize("path", YAMLS)
def test_yaml_loads_and_builds_on_meta(path, monkeypatch):
    cfg = load(path, monkeypatch)
    assert cfg.run_mode in ("train", "finetune", "eval", "predict")
    raw_model_config = dict(cfg.model.model_config)
    with torch.device("meta"):
        model = build_model(cfg.model)
    params = list(model.parameters())
    assert all(p.is_meta for p in params), "building must not allocate weights"
    count = sum(p.numel() for p in {id(p): p for p in params}.values())
    assert count == expected_count(raw_model_config)
    name = cfg.trainer.model_name
    if name in PUBLISHED:
        assert count == PUBLISHED[name], f"{path}: {count:,} parameters, published {PUBLISHED[name]:,}"
    if name in ROUNDED:
        assert round(count / 1e9, 2 if count < 1e10 else 1) == float(ROUNDED[name])


@pytest.mark.parametrize("size", ["llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b", "llama3_70b"])
def test_every_size_has_pretrain_finetune_predict(size):
    folder = "llama2" if size.startswith("llama2") else "llama3"
    for task in ("pretrain", "finetune", "predict"):
        assert f"configs/{folder}/{task}_{size}.yaml" in YAMLS


# The migration guide's list: Llama 3 8B = Llama 2 7B with these model_config values ...
LLAMA3_CHANGES = {
    "seq_length": 8192,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "intermediate_size": 14336,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "pad_token_id": 128002,
    "theta": 500000,
}
# ... and this tokenizer block.
LLAMA3_TOKENIZER = {
    "model_max_length": 8192,
    "pad_token": "<|reserved_special_token_0|>",
    "type": "Llama3Tokenizer",
    "auto_register": "llama3_1_tokenizer.Llama3Tokenizer",
}


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        elif isinstance(value, list):
            out[dotted] = repr(value)
        else:
            out[dotted] = value
    return out


@pytest.mark.parametrize("task", ["pretrain", "finetune", "predict"])
def test_llama3_differs_from_llama2_by_the_guides_list(task):
    old = _flatten(load_yaml(REPO / f"configs/llama2/{task}_llama2_7b.yaml"))
    new = _flatten(load_yaml(REPO / f"configs/llama3/{task}_llama3_8b.yaml"))
    changed = {k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>")}
    model = {k.removeprefix("model.model_config.") for k in changed if k.startswith("model.model_config.")}
    assert model == set(LLAMA3_CHANGES)
    assert all(new[f"model.model_config.{k}"] == v for k, v in LLAMA3_CHANGES.items())
    tokenizer = {k for k in changed if k.startswith("processor.tokenizer.")}
    assert {k.removeprefix("processor.tokenizer.") for k in tokenizer} == {
        *LLAMA3_TOKENIZER,
        "unk_token",
        "bos_token",
        "eos_token",
    }
    assert all(new[f"processor.tokenizer.{k}"] == v for k, v in LLAMA3_TOKENIZER.items())
    names = {"trainer.model_name", "callbacks"}  # the model's name, also the checkpoint prefix
    assert changed - {k for k in changed if k.startswith(("model.model_config.", "processor.tokenizer."))} <= names


def test_llama3_1_predict_holds_the_guides_processor_block():
    processor = load_yaml(REPO / "research/llama3_1/predict_llama3_1_8b.yaml")["processor"]
    assert processor == {
        "return_tensors": "ms",
        "tokenizer": {
            "model_max_length": 8192,
            "vocab_file": "/path/tokenizer.json",
            "pad_token": "<|reserved_special_token_0|>",
            "type": "Llama3Tokenizer",
            "auto_register": "llama3_1_tokenizer.Llama3Tokenizer",
        },
        "type": "LlamaProcessor",
    }


TRAIN_YAMLS = [p for p in YAMLS if Path(p).name.startswith(("pretrain_", "finetune_"))]


@pytest.mark.parametrize("path", TRAIN_YAMLS)
def test_training_blocks_build(path, monkeypatch):
    """optimizer (with lr_schedule), runner_wrapper and callbacks of each training YAML build as the trainer
    builds them, on a tiny stand-in network."""
    from torchformers.trainer.optimizer import get_optimizer_grouped_parameters

    cfg = load(path, monkeypatch)
    net = torch.nn.Linear(4, 4)
    schedule = build_lr(cfg.lr_schedule)
    optim_cfg = dict(cfg.optimizer)
    groups = get_optimizer_grouped_parameters(net, float(optim_cfg.pop("weight_decay", 0.0) or 0.0))
    optimizer = build_optim(optim_cfg, default_args={"params": groups, "learning_rate": schedule})
    assert isinstance(optimizer, torch.optim.Optimizer)
    build_wrapper(dict(cfg.runner_wrapper), default_args={"network": net, "optimizer": optimizer})
    types = [type(cb).__name__ for cb in build_callback(list(cfg.callbacks))]
    assert "CheckpointMonitor" in types and "MFLossMonitor" in types
    assert cfg.train_dataset_task.type == "CausalLanguageModelDataset"


PREDICT_TOKENIZERS = {
    "configs/llama2/predict_llama2_7b.yaml": ("llama2/tokenizer.model", "vocab_file", 1),
    "configs/llama3/predict_llama3_8b.yaml": ("llama3/tokenizer.model", "vocab_file", None),
    "research/llama3_1/predict_llama3_1_8b.yaml": ("llama3/tokenizer.model", "vocab_file", None),
    "research/qwen2/predict_qwen2_0_5b_instruct.yaml": ("vocab/ggml-vocab-qwen2.gguf", "vocab_file", None),
}


@pytest.mark.parametrize("path", list(PREDICT_TOKENIZERS))
def test_predict_tokenizer_block_builds_with_the_real_vocabulary(path, monkeypatch):
    from torchformers.tools.assets import fetch
    from torchformers.trainer.base_trainer import CausalLanguageModelingTrainer

    asset, key, bos = PREDICT_TOKENIZERS[path]
    cfg = load(path, monkeypatch)
    reference = cfg.processor.tokenizer.get("auto_register")
    if reference:  # an external tokenizer's module registers the vocabulary assets it reads
        MindFormerRegister.auto_register(reference, MindFormerModuleType.TOKENIZER)
    cfg.processor.tokenizer.pop("tokenizer_file", None)
    cfg.set_value(f"processor.tokenizer.{key}", str(fetch(asset)))
    tok = CausalLanguageModelingTrainer().build_tokenizer(cfg)
    ids = tok("hello world")["input_ids"]
    assert ids and (ids[0] == bos if bos is not None else ids[0] != cfg.model.model_config.bos_token_id)
    assert tok.pad_token_id == cfg.model.model_config.pad_token_id
