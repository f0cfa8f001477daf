"""A worker's Prometheus metrics: what its engine counts, what its adapter declares, the process's own.

One registry per worker process (:data:`REGISTRY`), built on ``prometheus-client`` (the Prometheus project's own
Python client: the text format, histograms, the process collector and an HTTP server are all there). The engine
counts each call once it ends (:meth:`WorkerMetrics.call_ended`) and a stream's chunks and bytes per batch it
sends, never per chunk: the hot path pays a few counter increments per call. Adapters declare their own metrics
with :func:`python_worker.sdk.metrics.counter` and friends, on the same registry.

``serve --metrics-port N`` serves the registry at ``/metrics`` (:func:`serve_http`); over the local link the pool
fetches the same text with the ``Metrics`` call (:func:`exposition`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# no `_created` series beside each counter and histogram: they double what is scraped and nothing here reads them
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library

# The worker's registry (not prometheus_client's global one, which a library in the adapter's process may fill):
# the process collector's metrics (CPU, memory, open fds), the Python runtime's, and the engine's below.
REGISTRY = CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)
prometheus_client.GCCollector(registry=REGISTRY)

# from 1 ms to ~80 s: tool calls range from a quick lookup to a long computation
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 80.0)

# a label for a tool name that no tool of this worker has: a caller's typo must not create a time series
UNKNOWN_TOOL = "_unknown"


class WorkerMetrics:
    """The engine's metric families, on ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.calls = Counter(
            "krait_tool_calls", "Tool calls ended, by tool and gRPC status code name", ["tool", "status"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "krait_tool_duration_seconds",
            "Tool call duration, from the request's arrival to the call's end",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.chunks = Counter("krait_stream_chunks", "Stream chunks produced, by tool", ["tool"], registry=registry)
        self.bytes = Counter(
            "krait_stream_bytes", "Stream chunk payload bytes produced, by tool", ["tool"], registry=registry
        )
        self.in_flight = Gauge("krait_calls_in_flight", "Tool calls running now", registry=registry)
        self.sessions = Gauge("krait_sessions", "Sessions open now", registry=registry)
        # labelled children cached: labels() takes a lock and builds a key on every call
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def watch(self, in_flight: Callable[[], float], sessions: Callable[[], float]) -> None:
        """The gauges read their values at scrape time: nothing to update on the hot path."""
        self.in_flight.set_function(in_flight)
        self.sessions.set_function(sessions)

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, family.labels(*labels))
        return child

    def call_ended(self, tool: str, status: str, seconds: float) -> None:
        self._child(self.calls, tool, status).inc()
        self._child(self.duration, tool).observe(seconds)

    def stream_sent(self, tool: str, chunks: int, nbytes: int) -> None:
        if chunks:
            self._child(self.chunks, tool).inc(chunks)
        if nbytes:
            self._child(self.bytes, tool).inc(nbytes)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format (version 0.0.4)."""
    data: bytes = prometheus_client.generate_latest(registry)
    return data


def serve_http(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``host:port`` (0: a free port) on a daemon thread; returns the server and its port."""
    server, _thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
