"""The launchers: `run_mindformer.py --run_mode serve` (settings from the YAML's `serve:` section and the
command line, a real process answering HTTP) and the terminal chat (`python -m torchformers.chat`) driven
through its standard input."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.serve.conftest import REPO, chat_prompt_ids, greedy_ids, http, predict_network
from torchformers.cli import config_from_args
from torchformers.errors import ConfigError
from torchformers.serve.chat import chat_loop
from torchformers.serve.launcher import API_KEY_ENV, build_engine, serve_settings
from torchformers.tools.register.config import MindFormerConfig


def _with_serve(tiny_yaml: Path, tmp_path: Path, serve) -> Path:
    cfg = yaml.safe_load(tiny_yaml.read_text())
    cfg["serve"] = serve
    path = tmp_path / "with_serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_settings_default_without_a_serve_section(tiny_yaml, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    s = serve_settings(MindFormerConfig(str(tiny_yaml), run_mode="serve"))
    assert (s.host, s.port, s.api_key, s.max_num_seqs, s.max_num_batched_tokens, s.block_size) == (
        "127.0.0.1",
        8000,
        None,
        16,
        512,
        16,
    )
    assert (s.num_blocks, s.max_model_len, s.enable_prefix_caching, s.max_queue, s.max_n) == (None, None, True, 256, 8)
    assert s.served_model_name == "smollm2_135m"  # trainer.model_name
    assert (s.default_max_tokens, s.do_sample) == (64, False)  # model_config.max_new_tokens, do_sample


def test_settings_from_the_serve_section_and_the_command_line(tiny_yaml, tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    path = _with_serve(tiny_yaml, tmp_path, {"port": 9001, "served_model_name": "tiny", "max_n": 2, "api_key": "a"})
    s = serve_settings(MindFormerConfig(str(path), run_mode="serve"))
    assert (s.port, s.served_model_name, s.max_n, s.api_key) == (9001, "tiny", 2, "a")
    config = config_from_args(
        [
            "--config",
            str(path),
            "--run_mode",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "9100",
            "--api_key",
            "k",
            "--serve.max_queue",
            "3",
        ]
    )
    s = serve_settings(config)
    assert (s.host, s.port, s.api_key, s.max_queue) == ("0.0.0.0", 9100, "k", 3)
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert serve_settings(MindFormerConfig(str(path), run_mode="serve")).api_key == "from-env"


def test_an_unknown_serve_key_is_a_config_error_naming_it(tiny_yaml, tmp_path):
    path = _with_serve(tiny_yaml, tmp_path, {"max_num_seq": 4})
    with pytest.raises(ConfigError, match=r"serve\.max_num_seq\b.*max_num_seqs"):
        MindFormerConfig(str(path), run_mode="serve")
    with pytest.raises(ConfigError, match="serve.port"):
        serve_settings(MindFormerConfig(str(_with_serve(tiny_yaml, tmp_path, {"port": "http"})), run_mode="serve"))


def test_a_prefix_tuned_model_is_refused_before_it_is_built(tiny_yaml, tmp_path):
    cfg = yaml.safe_load(tiny_yaml.read_text())
    cfg["model"]["model_config"]["pet_config"] = {"pet_type": "ptuning2", "pre_seq_len": 4}
    path = tmp_path / "ptuning2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"ptuning2\.yaml.*pet_type is 'ptuning2'.*lora"):
        build_engine(MindFormerConfig(str(path), run_mode="serve"))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(API_KEY_ENV, None)
    return env


def test_run_mode_serve_starts_a_server_that_answers(tiny_yaml, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "run_mindformer.py"),
            "--config",
            str(tiny_yaml),
            "--run_mode",
            "serve",
            "--port",
            "0",
            "--api_key",
            "k1",
            "--output_dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        url, lines, deadline = None, [], time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"serving smollm2_135m at (http://127\.0\.0\.1:\d+)/v1", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        assert http(url + "/health")[0] == 200
        assert http(url + "/v1/models")[0] == 401
        status, _, body = http(url + "/v1/models", headers={"Authorization": "Bearer k1"})
        assert status == 200 and json.loads(body)["data"][0]["id"] == "smollm2_135m"
        status, _, body = http(
            url + "/v1/completions",
            "POST",
            json.dumps({"model": "smollm2_135m", "prompt": "Hi", "max_tokens": 3}),
            headers={"Authorization": "Bearer k1"},
        )
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, no traceback
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0 and "server stopped" in rest and "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_chat_cli_streams_multi_turn_answers_through_stdin(tiny_yaml, tmp_path):
    first, second = "Write a short poem about the sea.", "Now one about the sky."
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchformers.chat",
            "--config",
            str(tiny_yaml),
            "--output_dir",
            str(tmp_path),
            "--model.model_config.max_new_tokens",
            "16",
        ],
        input=f"{first}\n{second}\n/reset\n{first}\n/exit\nnever read\n",
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout[proc.stdout.index("/exit quits\n") + len("/exit quits\n") :]
    turns = out.split(">>> ")
    assert turns[0] == "" and turns[-1] == ""  # ends at /exit
    answers = [t.removesuffix("\n") for t in turns[1:-1]]
    assert answers[2] == "(conversation cleared)"
    model, tok = predict_network(tiny_yaml)
    eos = tok.eos_token_id

    def reference(messages):
        return tok.decode(greedy_ids(model, chat_prompt_ids(tok, messages), 16, eos), skip_special_tokens=True)

    want1 = reference([{"role": "user", "content": first}])
    want2 = reference(
        [
            {"role": "user", "content": first},
            {"role": "assistant", "content": want1},
            {"role": "user", "content": second},
        ]
    )
    assert answers[0] == want1
    assert answers[1] == want2  # the second turn sees the first
    assert answers[3] == want1  # /reset forgot the conversation


def test_chat_ends_at_end_of_input(tiny_yaml):
    engine, tokenizer, settings = build_engine(MindFormerConfig(str(tiny_yaml), run_mode="chat"))
    out = io.StringIO()
    chat_loop(engine, tokenizer, settings, stdin=io.StringIO("Hello\n"), stdout=out)
    assert out.getvalue().endswith(">>> \n")  # one answer, then end of input closes the chat
    assert out.getvalue().count(">>> ") == 2 and not engine.has_unfinished_requests()
