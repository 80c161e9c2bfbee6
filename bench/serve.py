"""Serving speed: torchformers' OpenAI server against vLLM's CPU build and `transformers serve`, same weights.

A load generator: N concurrent clients each send R streaming chat completions one after another, all
with the same short chat prompt (about 30 tokens with SmolLM2's template) and exactly `--max_tokens`
output tokens (`ignore_eos`, temperature 0). For each server and each concurrency it reports

- output tokens/s: all output tokens of the level / its wall time (first request sent to last token),
- time to first token (TTFT) p50 / p99: request sent -> first streamed token,
- inter-token latency (ITL) p50 / p99: gaps between successive streamed tokens of a request,
- the server's peak resident memory (summed over its process tree, sampled every 0.1 s) when the bench
  started the server itself.

The token count of a request is the server's `usage.completion_tokens` (`stream_options.include_usage`),
or the number of content chunks when it sends no usage. Every server gets one unmeasured request first.

Servers it can start (`--servers`, one at a time, each stopped before the next starts):

- `ours`: `run_mindformer.py --config CONFIG --run_mode serve --port P` (CONFIG: `--config`, by default
  SmolLM2-135M-Instruct fp32; `python scripts/prepare_smollm2.py` prepares its checkpoint),
- `vllm`: `VLLM_CPU_KVCACHE_SPACE=2 vllm serve HF_DIR --dtype float32 --max-model-len 2048` (`--vllm` names
  the executable of vLLM's CPU build; docs/performance_tuning.md, "Serving", says how it is installed),
- `transformers`: `transformers serve` (the CLI beside this Python, or `--transformers_cli`), asked for HF_DIR.

HF_DIR is a Hugging Face folder of the same weights: `--make_hf_dir DIR` writes it (fp32 `model.safetensors`,
`config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json` with the chat template),
from the same GGUF file that `scripts/prepare_smollm2.py` converts, through the same conversion. Running
servers are measured with `--url URL` (repeatable, `NAME=URL` to label it; `--model` names the model, by
default the first of its `/v1/models`).

    PYTHONPATH=. python bench/serve.py --make_hf_dir checkpoint_download/smollm2_hf
    PYTHONPATH=. python bench/serve.py --servers ours,vllm --vllm /path/to/vllmenv/bin/vllm \\
        --hf_dir checkpoint_download/smollm2_hf --clients 1 8 16 --requests_per_client 2 --max_tokens 64
    PYTHONPATH=. python bench/serve.py --url vllm=http://127.0.0.1:8011 --clients 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import httpx
except ImportError:  # the API-compatible successor some environments ship instead
    import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/smollm2/predict_smollm2_135m.yaml"
DEFAULT_HF_DIR = "checkpoint_download/smollm2_hf"
GGUF_ASSET = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a story about the sea."


# ---------------------------------------------------------------------------------------------------------
# The Hugging Face folder vLLM and `transformers serve` load


def make_hf_dir(out_dir: str | Path, gguf_path: str | Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a Hugging Face folder (fp32) from the embedded default's GGUF file.

    The weights go GGUF -> native (`gguf_to_native`, as `scripts/prepare_smollm2.py`) -> Hugging Face names
    (`convert_checkpoint(reversed=True)`), so they are exactly the ones torchformers serves; the tokenizer
    files come from the GGUF metadata (`convert_gguf_tokenizer`). Files are written into a temporary folder
    beside `out_dir` and moved in one by one.
    """
    from torchformers.checkpoint import convert_checkpoint, gguf_to_native
    from torchformers.models.gguf_tokenizer import convert_gguf_tokenizer

    if gguf_path is None:
        from torchformers.tools.assets import fetch

        gguf_path = fetch(GGUF_ASSET)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp = Path(tmp)
        config = gguf_to_native(gguf_path, tmp / "native.safetensors", dtype="fp32")
        convert_checkpoint(tmp / "native.safetensors", tmp / "model.safetensors", reversed=True, dtype="fp32")
        (tmp / "native.safetensors").unlink()
        convert_gguf_tokenizer(gguf_path, tmp)
        tok_config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
        if not tok_config.get("chat_template"):
            raise SystemExit(f"{gguf_path}: the GGUF file has no chat template (tokenizer.chat_template)")
        config.setdefault("architectures", ["LlamaForCausalLM"])
        config["torch_dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
    return out


# ---------------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class RequestResult:
    ttft: float | None = None  # seconds from send to the first token
    gaps: list[float] = field(default_factory=list)  # seconds between successive token chunks
    chunks: int = 0  # streamed chunks that carried output
    tokens: int = 0  # usage.completion_tokens when the server sends it, else `chunks`
    error: str | None = None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def stream_chat(client: httpx.AsyncClient, url: str, payload: dict) -> RequestResult:
    """Send one streaming chat completion and time its server-sent events."""
    result = RequestResult()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:300]}"
                return result
            usage = None
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    result.error = f"error event in the stream: {json.dumps(event['error'])[:300]}"
                    return result
                if event.get("usage"):
                    usage = event["usage"]
                choices = event.get("choices") or []
                if not choices:
                    continue
                delta = choices[0].get("delta") or {}
                if not delta.get("content"):
                    continue  # the role-only opening chunk, or an empty finishing chunk
                now = time.perf_counter()
                if result.ttft is None:
                    result.ttft = now - start
                else:
                    result.gaps.append(now - last)
                last = now
                result.chunks += 1
            result.tokens = int(usage["completion_tokens"]) if usage else result.chunks
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run_level(
    url: str, model: str, clients: int, requests_per_client: int, max_tokens: int, prompt: str, ignore_eos: bool = True
):
    """`clients` concurrent clients, each sending `requests_per_client` requests in turn."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        payload["ignore_eos"] = True
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    timeout = httpx.Timeout(600.0, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one_client() -> list[RequestResult]:
            return [await stream_chat(client, url, payload) for _ in range(requests_per_client)]

        start = time.perf_counter()
        per_client = await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return [r for rs in per_client for r in rs], wall


def summarize(results: list[RequestResult], wall: float, max_tokens: int) -> dict:
    ok = [r for r in results if r.error is None and r.ttft is not None]
    tokens = sum(r.tokens for r in ok)
    return {
        "requests": len(results),
        "errors": [r.error or "no token streamed" for r in results if r not in ok],
        "short": sum(r.tokens < max_tokens for r in ok),
        "multi_token_chunks": sum(r.tokens != r.chunks for r in ok),
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall if wall > 0 else float("nan"),
        "ttft_p50": percentile([r.ttft for r in ok], 50) * 1000,
        "ttft_p99": percentile([r.ttft for r in ok], 99) * 1000,
        "itl_p50": percentile([g for r in ok for g in r.gaps], 50) * 1000,
        "itl_p99": percentile([g for r in ok for g in r.gaps], 99) * 1000,
    }


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (from /proc; 0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


class PeakRSS:
    """The largest resident memory of a process tree, sampled in a thread while the block runs."""

    def __init__(self, pid: int | None, interval: float = 0.1):
        self.pid, self.interval, self.peak = pid, interval, 0

    def __enter__(self):
        self.running = self.pid is not None and os.path.isdir("/proc")
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


# ---------------------------------------------------------------------------------------------------------
# Starting and stopping servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    model: str | None = None
    process: subprocess.Popen | None = None
    log: Path | None = None
    ignore_eos: bool = True  # send vLLM's `ignore_eos` (servers that reject unknown fields get none)


def start_server(name: str, args, log_dir: Path) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    model = None
    ignore_eos = True
    if name == "ours":
        cmd = [args.python, str(ROOT / "run_mindformer.py"), "--config", args.config, "--run_mode", "serve",
               "--port", str(port)]  # fmt: skip
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    elif name == "vllm":
        cmd = [args.vllm, "serve", str(Path(args.hf_dir).resolve()), "--dtype", "float32", "--host", "127.0.0.1",
               "--port", str(port), "--max-model-len", "2048", "--served-model-name", "smol",
               *shlex.split(args.vllm_args)]  # fmt: skip
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.pop("PYTHONPATH", None)  # vLLM runs in its own environment, not on the project's path
        model = "smol"
    elif name == "transformers":
        model = str(Path(args.hf_dir).resolve())
        cmd = [args.transformers_cli, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--dtype", "float32", *shlex.split(args.transformers_args)]  # fmt: skip
        ignore_eos = False  # it answers 422 to fields it does not know
    else:
        raise SystemExit(f"--servers: unknown server {name!r} (known: ours, vllm, transformers)")
    log = log_dir / f"{name}.log"
    print(f"[{name}] starting: {shlex.join(cmd)} (log: {log})", flush=True)
    with open(log, "wb") as f:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, url, model, process, log, ignore_eos)
    try:
        wait_healthy(server, args.startup_timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_healthy(server: Server, timeout: float) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.process is not None and server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-3000:] if server.log else ""
            raise RuntimeError(f"[{server.name}] exited with code {server.process.returncode} while starting:\n{tail}")
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                print(f"[{server.name}] healthy after {time.perf_counter() - start:.0f} s", flush=True)
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    stop_server(server)
    raise RuntimeError(f"[{server.name}] no healthy /health within {timeout:.0f} s (log: {server.log})")


def stop_server(server: Server) -> None:
    """SIGINT to the server's process group, then SIGTERM, then SIGKILL."""
    process = server.process
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def served_model(server: Server) -> str:
    if server.model:
        return server.model
    response = httpx.get(f"{server.url}/v1/models", timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


# ---------------------------------------------------------------------------------------------------------
# The run


def bench_server(server: Server, args, rows: list[dict]) -> None:
    """Measure `server` at every concurrency of `args.clients`, appending a row per level to `rows`."""
    model = served_model(server)
    print(f"[{server.name}] model {model!r} at {server.url}: warm-up request", flush=True)

    def level(clients: int, requests: int):
        return asyncio.run(
            run_level(server.url, model, clients, requests, args.max_tokens, args.prompt, server.ignore_eos)
        )

    warm, _ = level(1, 1)
    if warm[0].error:
        raise RuntimeError(f"[{server.name}] warm-up request failed: {warm[0].error}")
    pid = server.process.pid if server.process is not None else None
    for clients in args.clients:
        with PeakRSS(pid) as mem:
            results, wall = level(clients, args.requests_per_client)
        row = {"server": server.name, "clients": clients, **summarize(results, wall, args.max_tokens)}
        row["peak_mib"] = mem.peak / 2**20 if pid is not None else None
        rows.append(row)
        peak = "" if pid is None else f", peak RSS {row['peak_mib']:.0f} MiB"
        print(f"[{server.name}] {clients:3d} clients: {row['tok_s']:.1f} output tok/s, TTFT p50 "
              f"{row['ttft_p50']:.0f} ms, ITL p50 {row['itl_p50']:.1f} ms{peak}", flush=True)  # fmt: skip
        for error in row["errors"][:3]:
            print(f"[{server.name}]   error: {error}", flush=True)


def print_table(rows: list[dict], markdown: bool) -> None:
    header = ("server", "clients", "requests", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms",
              "ITL p99 ms", "peak RSS MiB")  # fmt: skip

    def cells(r):
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        return (r["server"], str(r["clients"]), str(r["requests"]), f"{r['tok_s']:.1f}", f"{r['ttft_p50']:.0f}",
                f"{r['ttft_p99']:.0f}", f"{r['itl_p50']:.1f}", f"{r['itl_p99']:.1f}", peak)  # fmt: skip

    if not rows:
        print("no level was measured")
        return
    rows = sorted(rows, key=lambda r: (r["clients"], r["server"] != "ours"))
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(cells(r)) + " |")
        return
    widths = [max(len(h), *(len(cells(r)[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells(r), widths))))


def print_ratios(rows: list[dict]) -> None:
    by = {(r["server"], r["clients"]): r for r in rows}
    names = list(dict.fromkeys(r["server"] for r in rows))
    if "ours" not in names:
        return
    single = by.get(("ours", min(r["clients"] for r in rows)))
    for clients in sorted({r["clients"] for r in rows}):
        ours = by.get(("ours", clients))
        if ours is None:
            continue
        parts = []
        for other in names:
            theirs = by.get((other, clients))
            if other == "ours" or theirs is None:
                continue
            parts.append(f"ours/{other} tok/s {ours['tok_s'] / theirs['tok_s']:.2f}x, "
                         f"TTFT p50 {ours['ttft_p50'] / theirs['ttft_p50']:.2f}x")  # fmt: skip
        if single is not None and single is not ours:
            parts.append(f"ours vs ours at {single['clients']} client(s) {ours['tok_s'] / single['tok_s']:.2f}x")
        if parts:
            print(f"{clients} clients: " + "; ".join(parts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make_hf_dir", metavar="DIR", help="write the Hugging Face folder of SmolLM2 and exit")
    p.add_argument("--gguf", help="GGUF file for --make_hf_dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--servers", default=None, help="comma list of servers to start: ours, vllm, transformers "
                   "(default: ours,vllm; none with --url)")  # fmt: skip
    p.add_argument("--url", action="append", default=[], help="a running server, URL or NAME=URL (repeatable)")
    p.add_argument("--model", help="model name for --url servers (default: the first of its /v1/models)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 16], help="concurrency levels")
    p.add_argument("--requests_per_client", type=int, default=2)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--prompt", default=PROMPT, help="the user message (one turn, through the chat template)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML our server runs")
    p.add_argument("--python", default=sys.executable, help="Python that runs our server")
    p.add_argument("--hf_dir", default=DEFAULT_HF_DIR, help="Hugging Face folder vLLM and transformers serve")
    p.add_argument("--vllm", default="vllm", help="the `vllm` executable of vLLM's CPU build")
    p.add_argument("--vllm_args", default="", help="extra arguments for `vllm serve`")
    p.add_argument("--transformers_cli", default=str(Path(sys.executable).parent / "transformers"))
    p.add_argument("--transformers_args", default="", help="extra arguments for `transformers serve`")
    p.add_argument("--startup_timeout", type=float, default=900.0, help="seconds to wait for /health")
    p.add_argument("--log_dir", default=None, help="server logs (default: a temporary folder, removed)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", dest="json_out", help="also write every row to this JSON file")
    args = p.parse_args()

    if args.make_hf_dir:
        out = make_hf_dir(args.make_hf_dir, args.gguf)
        print(f"Hugging Face folder written: {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
        return 0

    servers_arg = args.servers if args.servers is not None else ("" if args.url else "ours,vllm")
    names = [n.strip() for n in servers_arg.split(",") if n.strip()]
    for name in names:
        if name == "vllm" and shutil.which(args.vllm) is None:
            raise SystemExit(f"--vllm {args.vllm!r}: no such executable (vLLM's CPU build, see the docstring)")
        if name in ("vllm", "transformers") and not (Path(args.hf_dir) / "config.json").is_file():
            raise SystemExit(f"--hf_dir {args.hf_dir}: no config.json; write it with --make_hf_dir {args.hf_dir}")
        if name == "transformers" and shutil.which(args.transformers_cli) is None:
            raise SystemExit(f"--transformers_cli {args.transformers_cli!r}: no such executable")
    if not names and not args.url:
        raise SystemExit("nothing to measure: give --servers or --url")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `timeout` and job control stop the servers too
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        log_dir = Path(args.log_dir or tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for spec in args.url:
                label, _, url = spec.partition("=") if "=" in spec.split("://")[0] else ("", "", spec)
                bench_server(Server(label or url, url.rstrip("/"), args.model), args, rows)
            for name in names:
                try:
                    server = start_server(name, args, log_dir)
                except RuntimeError as exc:
                    print(f"{exc}\n[{name}] not measured", flush=True)
                    continue
                try:
                    bench_server(server, args, rows)
                finally:
                    stop_server(server)
                    print(f"[{name}] stopped", flush=True)
        except KeyboardInterrupt:
            print("interrupted: the table below has the levels measured so far", flush=True)

    print(f"\n{args.requests_per_client} requests per client, max_tokens {args.max_tokens} (with ignore_eos where the "
          f"server takes it), temperature 0; prompt: {args.prompt!r}")  # fmt: skip
    for r in rows:
        if r["errors"]:
            print(f"{r['server']} at {r['clients']} clients: {len(r['errors'])} failed request(s): {r['errors'][0]}")
        if r["short"]:
            print(f"{r['server']} at {r['clients']} clients: {r['short']} request(s) ended before max_tokens")
        if r["multi_token_chunks"]:
            print(f"{r['server']} at {r['clients']} clients: some chunks carried several tokens "
                  "(inter-token latency is per chunk there)")  # fmt: skip
    print()
    print_table(rows, args.markdown)
    print()
    print_ratios(rows)
    if args.json_out:
        tmp_path = Path(args.json_out).with_suffix(".tmp")
        tmp_path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_path, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
