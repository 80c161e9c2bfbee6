"""Research code written for MindFormers loads: the fixture `mf_style/tiny_llama3/tiny_tokenizer.py` uses an
absolute `from research...` import, relative imports and the registry decorator, and is registered through
`auto_register`; `run_mindformer.py --run_mode predict` runs with it (tiny model and tokenizer as in
test_seed_command.py).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.research.test_seed_command import expected_text, hf_model, shrink_args
from torchformers.checkpoint import save_checkpoint
from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.tools.assets import fetch

pytest.importorskip("transformers")
pytest.importorskip("tiktoken")

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "mf_style" / "tiny_llama3"


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    """A user's MindFormers checkout: research/tiny_llama3/ (the fixture) and a 2-layer Llama 3 .ckpt."""
    root = tmp_path_factory.mktemp("user_repo")
    shutil.copytree(FIXTURE, root / "research" / "tiny_llama3")
    model = hf_model()
    native = {LLAMA_HF_KEY_MAP.to_native(k): v for k, v in model.state_dict().items()}
    save_checkpoint(native, root / "tiny.ckpt")
    return root, model


def command(root: Path) -> list[str]:
    return [
        str(REPO / "run_mindformer.py"),
        "--config", str(REPO / "research/llama3_1/predict_llama3_1_8b.yaml"),
        "--run_mode", "predict",
        "--load_checkpoint", str(root / "tiny.ckpt"),
        "--register_path", "research/tiny_llama3",
        "--predict_data", "hello",
        "--processor.tokenizer.type", "TinyLlama3Tokenizer",
        "--processor.tokenizer.auto_register", "tiny_tokenizer.TinyLlama3Tokenizer",
        "--processor.tokenizer.vocab_file", str(fetch("llama3/tokenizer.model")),
        "--model.model_config.compute_dtype", "float32",
        "--model.model_config.param_init_type", "float32",
        *shrink_args(),
    ]  # fmt: skip


def test_research_style_file_loads_and_predict_runs(user_repo):
    root, model = user_repo
    # the user's repository root on sys.path, as MindFormers' run_mindformer.py puts its own root there
    path = os.pathsep.join([str(REPO), str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("REGISTER_PATH", None)
    result = subprocess.run(
        [sys.executable, *command(root)], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    marker = "tiny_llama3 research-style tokenizer: research.tiny_llama3.tiny_tokenizer (one state module: True)"
    assert marker in result.stderr
    saved = ast.literal_eval((root / "text_generation_result.txt").read_text(encoding="utf-8"))
    assert saved[0]["text_generation_text"][0] == expected_text(model)


def test_research_style_file_in_process(user_repo, monkeypatch, clean_register_env):
    """The same run through the launcher in this process: the registered class is the one module's class."""
    from torchformers.cli import main
    from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

    root, _ = user_repo
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    for name in [n for n in sys.modules if n == "research" or n.startswith("research.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(command(root)[1:]) == 0
    tokenizer_class = MindFormerRegister.get_cls(MindFormerModuleType.TOKENIZER, "tiny_llama3_tokenizer")
    module = sys.modules["research.tiny_llama3.tiny_tokenizer"]
    assert tokenizer_class is module.TinyLlama3Tokenizer
    assert MindFormerRegister.get_cls(MindFormerModuleType.TOKENIZER, "TinyLlama3Tokenizer") is tokenizer_class
    assert sys.modules["research.tiny_llama3.tiny_state"].CREATED == ["research.tiny_llama3.tiny_tokenizer"]
