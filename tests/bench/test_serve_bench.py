"""bench/serve.py: the load generator measures what a server streams, and its Hugging Face folder holds our weights."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_serve", REPO / "bench" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


class StandIn:
    """An OpenAI-style streaming chat server: `tokens` chunks, the first after `first_delay`, then every `delay`."""

    def __init__(self, tokens=5, first_delay=0.05, delay=0.02, usage=True, status=200, error_after=None):
        self.tokens, self.first_delay, self.delay, self.usage, self.status = tokens, first_delay, delay, usage, status
        self.error_after = error_after
        self.active = self.max_active = self.requests = 0
        self.payloads = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests += 1
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                    owner.payloads.append(payload)
                try:
                    owner.respond(self)
                finally:
                    with owner.lock:
                        owner.active -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def respond(self, h):
        if self.status != 200:
            body = json.dumps({"error": {"message": "bad", "type": "invalid_request_error"}}).encode()
            h.send_response(self.status)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()

        def send(event):
            h.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            h.wfile.flush()

        send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for i in range(self.tokens):
            if i == self.error_after:
                send({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
                return
            time.sleep(self.first_delay if i == 0 else self.delay)
            send({"choices": [{"index": 0, "delta": {"content": f" t{i}"}}]})
        send({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        if self.usage:
            send({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": self.tokens}})
        h.wfile.write(b"data: [DONE]\n\n")
        h.close_connection = True

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_concurrent_clients_are_measured_from_the_stream():
    with StandIn(tokens=6, first_delay=0.08, delay=0.03) as server:
        results, wall = asyncio.run(bench.run_level(server.url, "m", 4, 2, 6, "hello"))
    row = bench.summarize(results, wall, 6)
    assert server.requests == 8 and server.max_active == 4  # 4 clients at once, 2 requests each
    assert server.payloads[0]["stream"] is True and server.payloads[0]["ignore_eos"] is True
    assert server.payloads[0]["max_tokens"] == 6 and server.payloads[0]["temperature"] == 0
    assert row["errors"] == [] and row["short"] == 0 and row["multi_token_chunks"] == 0
    assert row["tokens"] == 48
    assert all(len(r.gaps) == 5 for r in results)
    assert 80 <= row["ttft_p50"] < 400
    assert 30 <= row["itl_p50"] < 150
    # two requests in turn per client: the wall time covers both, so tok/s is below 4 streams at full pace
    assert row["tok_s"] == pytest.approx(48 / wall)
    assert wall >= 2 * (0.08 + 5 * 0.03)


def test_without_usage_the_chunks_are_counted_and_errors_are_reported():
    with StandIn(tokens=3, usage=False) as server:
        results, wall = asyncio.run(bench.run_level(server.url, "m", 1, 1, 8, "hello"))
    row = bench.summarize(results, wall, 8)
    assert row["tokens"] == 3 and row["short"] == 1
    with StandIn(status=400) as server:
        results, wall = asyncio.run(bench.run_level(server.url, "m", 2, 1, 8, "hello"))
    row = bench.summarize(results, wall, 8)
    assert row["tokens"] == 0 and len(row["errors"]) == 2 and row["errors"][0].startswith("HTTP 400")
    with StandIn(tokens=4, error_after=2) as server:  # an error event in the middle of the stream
        results, wall = asyncio.run(bench.run_level(server.url, "m", 1, 1, 4, "hello"))
    row = bench.summarize(results, wall, 4)
    assert row["tokens"] == 0 and "engine died" in row["errors"][0]


def test_percentile_matches_numpy():
    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0, 1, 50, 90, 99, 100):
        assert bench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_tree_rss_counts_the_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.time() + 20
        while time.time() < deadline and bench.tree_rss_bytes(child.pid) < 64 << 20:
            time.sleep(0.1)
        alone = bench.tree_rss_bytes(child.pid)
        with_parent = bench.tree_rss_bytes(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert alone >= 64 << 20
    assert with_parent >= alone + bench.tree_rss_bytes(os.getpid()) // 2  # ours and the child's


@pytest.mark.slow
def test_hf_dir_holds_the_weights_torchformers_serves(tmp_path):
    """The folder vLLM serves, read by transformers, gives the logits of our model on the same GGUF's weights."""
    import torch
    import transformers

    from torchformers.checkpoint import gguf_to_native
    from torchformers.models import LlamaConfig, LlamaForCausalLM
    from torchformers.tools.assets import fetch

    gguf = fetch(bench.GGUF_ASSET)
    hf_dir = bench.make_hf_dir(tmp_path / "hf", gguf)
    assert {p.name for p in hf_dir.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    }  # fmt: skip
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": bench.PROMPT}], add_generation_prompt=True)
    ids = torch.tensor([ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids])
    assert tok.decode(ids[0]).startswith("<|im_start|>system\n")  # the chat template came along
    gguf_to_native(gguf, tmp_path / "native.safetensors", dtype="fp32")
    ours = LlamaForCausalLM(LlamaConfig(**hf.config.to_dict())).eval()
    ours.load_checkpoint(str(tmp_path / "native.safetensors"))
    with torch.no_grad():
        theirs_logits = hf(ids).logits
        out = ours(ids)
        ours_logits = out.logits if hasattr(out, "logits") else out
    torch.testing.assert_close(ours_logits, theirs_logits, atol=2e-4, rtol=1e-4)
