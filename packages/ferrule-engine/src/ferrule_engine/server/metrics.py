"""Prometheus metrics of a running server, in a registry of its own (no global state).

Engine state (running and waiting requests, KV cache usage, prefix-cache hit rate, token
counters) is read from ``AsyncLLM.stats()`` when ``/metrics`` is scraped; per-request
latencies (time to first token, time per output token) are observed when a request ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector:
    def __init__(self, stats: Callable[[], dict[str, Any]]):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        gauges = {
            "ferrule_num_requests_running": ("requests being computed", "num_running"),
            "ferrule_num_requests_waiting": ("requests waiting for a seat", "num_waiting"),
            "ferrule_kv_cache_usage_perc": ("fraction of KV blocks in use (0..1)", "kv_usage"),
            "ferrule_prefix_cache_hit_rate": ("prompt tokens served from cache", "prefix_hit_rate"),
        }
        for name, (help_text, key) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=float(stats.get(key, 0) or 0))
        counters = {
            "ferrule_prompt_tokens": ("prompt tokens taken in", "prompt_tokens"),
            "ferrule_generation_tokens": ("tokens generated", "generation_tokens"),
            "ferrule_num_preemptions": ("requests preempted", "num_preemptions"),
        }
        for name, (help_text, key) in counters.items():
            yield CounterMetricFamily(name, help_text, value=float(stats.get(key, 0) or 0))


class ServerMetrics:
    def __init__(self, stats: Callable[[], dict[str, Any]]):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats))
        self.ttft = Histogram(
            "ferrule_time_to_first_token_seconds",
            "time from arrival to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "ferrule_time_per_output_token_seconds",
            "mean time between output tokens after the first, per request",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "ferrule_request_success",
            "requests that ended, by finish reason",
            ["finish_reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "ferrule_http_errors",
            "requests answered with an error, by status",
            ["status"],
            registry=self.registry,
        )

    def observe(self, output: Any) -> None:
        """Record a finished ``RequestOutput``."""
        metrics = output.metrics
        if metrics is not None and metrics.time_to_first_token is not None:
            self.ttft.observe(metrics.time_to_first_token)
            tokens = max(len(c.token_ids) for c in output.outputs)
            if tokens > 1 and metrics.finished_time is not None:
                spent = metrics.finished_time - metrics.first_token_time
                self.tpot.observe(max(spent, 0.0) / (tokens - 1))
        for completion in output.outputs:
            self.finished.labels(completion.finish_reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
