"""Prometheus metrics of the server, in the app's own registry (`GET /metrics`).

Counted by the server: requests by endpoint and status, time to first token, inter-token latency and
request latency. Read from the engine at each scrape: waiting and running sequences, KV-cache blocks (all,
free), prompt, generated and prefix-cache-reused tokens, finished requests by reason, preemptions.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "torchformers"

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class _EngineCollector(Collector):
    """Gauges and counters taken from `engine.stats()` when scraped."""

    def __init__(self, stats: Callable, queue_length: Callable[[], int]):
        self.stats = stats
        self.queue_length = queue_length

    def collect(self):
        s = self.stats()

        def gauge(name, doc, value):
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            g.add_metric([], value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(f"{PREFIX}_{name}", doc)
            c.add_metric([], value)
            return c

        yield gauge("num_requests_waiting", "Sequences waiting in the engine to be scheduled", s.num_waiting)
        yield gauge("num_requests_running", "Sequences in the running batch", s.num_running)
        yield gauge(
            "server_queue_length", "Requests admitted by the server that have no first token yet", self.queue_length()
        )
        yield gauge("kv_cache_blocks", "KV-cache blocks in all", s.num_blocks)
        yield gauge("kv_cache_free_blocks", "KV-cache blocks free", s.num_free_blocks)
        yield gauge(
            "kv_cache_usage_ratio",
            "Share of the KV-cache blocks in use",
            1.0 - s.num_free_blocks / s.num_blocks if s.num_blocks else 0.0,
        )
        yield counter("prompt_tokens", "Prompt tokens of admitted requests", s.prompt_tokens_total)
        yield counter("generation_tokens", "Tokens generated", s.generation_tokens_total)
        yield counter(
            "prefix_cache_reused_tokens",
            "Prompt tokens taken from the prefix cache instead of computed",
            s.cached_tokens_total,
        )
        yield counter("num_preemptions", "Sequences preempted for lack of KV-cache blocks", s.num_preemptions_total)
        finished = CounterMetricFamily(f"{PREFIX}_request_finished", "Requests finished, by reason", labels=["reason"])
        for reason, count in sorted((s.requests_finished_total or {}).items()):
            finished.add_metric([str(reason)], count)
        yield finished


class ServerMetrics:
    """The server's registry: request counts and latencies, plus the engine's figures at scrape time."""

    def __init__(self, stats: Callable, queue_length: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Arrival of a request to its first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Time between two outputs of one sequence",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "Arrival of a request to its last token",
            buckets=_LATENCY_BUCKETS + (60.0, 120.0),
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(stats, queue_length))

    def render(self) -> bytes:
        return generate_latest(self.registry)
