"""A worker's Prometheus metrics: what its engine counts, what its adapter declares, the process's own.

One registry per worker process (:data:`REGISTRY`), built on ``prometheus-client`` (the Prometheus project's own
Python client: the text format, histograms, the process collector and an HTTP server are all there). The engine
counts each call once it ends (:meth:`WorkerMetrics.call_ended`) and a stream's chunks and bytes per batch it
sends, never per chunk. A call's end is counted in plain ints of its thread's own (:class:`_Tally`), summed into
the calls and duration families when the registry is collected (:class:`_CallCollector`): prometheus_client's
counter and histogram take three locks per call, ~5% of a quick unary call's CPU. Adapters declare their own metrics
with :func:`python_worker.sdk.metrics.counter` and friends, on the same registry.

``serve --metrics-port N`` serves the registry at ``/metrics`` (:func:`serve_http`); over the local link the pool
fetches the same text with the ``Metrics`` call (:func:`exposition`).

The metrics port is a TCP listener like the others, under the same rules (``transports/security.py``): the
worker's host, its TLS certificate (and client CA), its token as ``Authorization: Bearer`` (Prometheus:
``authorization: {credentials_file: ...}``), the Host check. prometheus_client's own server has none of these, so
it is served by a small threaded server of the standard library instead of the asyncio fronts: a scrape every few
seconds needs no event loop, and the worker must serve metrics without the ``http`` extra. Its threads are
bounded: at most :data:`MAX_CONNECTIONS` at once (more are closed unanswered), each with a socket timeout and a
deadline for its request; a wrong or missing token is held for the worker's shared :data:`~.transports.security.
PENALTY` (at most :data:`MAX_HOLD_S`), on that connection's own thread.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .transports.security import PENALTY, ServerSecurity

log = logging.getLogger("krait.metrics")

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


_CALLS = ("krait_tool_calls", "Tool calls ended, by tool and gRPC status code name")
_DURATION = ("krait_tool_duration_seconds", "Tool call duration, from the request's arrival to the call's end")
# the buckets' `le` labels as prometheus_client's own Histogram writes them
_LE: list[str] = [floatToGoString(b) for b in (*DURATION_BUCKETS, float("inf"))]  # type: ignore[no-untyped-call]


class _Tally:
    """The calls one thread has seen end: written by that thread only (no lock: an int's ``+=`` by another
    thread could lose an increment, which one writer per tally rules out), read by the collector."""

    __slots__ = ("calls", "durations")

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}  # (tool, status): calls ended
        # tool: a count per bucket (DURATION_BUCKETS, then +Inf), not cumulative, and the sum last
        self.durations: dict[str, list[float]] = {}

    def add(self, other: _Tally) -> None:
        # copies taken first (each one C call): other's thread may add a key meanwhile
        for key, count in other.calls.copy().items():
            self.calls[key] = self.calls.get(key, 0) + count
        for tool, counts in other.durations.copy().items():
            mine = self.durations.setdefault(tool, [0.0] * (len(DURATION_BUCKETS) + 2))
            for i, value in enumerate(counts.copy()):
                mine[i] += value


class _CallCollector(Collector):
    """The calls and duration families, summed from every thread's :class:`_Tally` at collection."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(*_CALLS, labels=["tool", "status"]), HistogramMetricFamily(*_DURATION)]

    def collect(self) -> list[Metric]:
        total = self._metrics._total()
        calls = CounterMetricFamily(*_CALLS, labels=["tool", "status"])
        for (tool, status), count in total.calls.items():
            calls.add_metric([tool, status], float(count))
        duration = HistogramMetricFamily(*_DURATION, labels=["tool"])
        for tool, counts in total.durations.items():
            cumulative, buckets = 0.0, []
            for le, in_bucket in zip(_LE, counts, strict=False):  # counts' last entry, the sum, left out
                cumulative += in_bucket
                buckets.append((le, cumulative))
            duration.add_metric([tool], buckets, counts[-1])
        return [calls, duration]


class WorkerMetrics:
    """The engine's metric families, on ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._local = threading.local()  # this thread's _Tally
        self._tallies: list[tuple[threading.Thread, _Tally]] = []
        self._retired = _Tally()  # the tallies of threads that have ended, summed
        registry.register(_CallCollector(self))
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
        try:
            tally: _Tally = self._local.tally
        except AttributeError:
            tally = self._new_tally()
        calls = tally.calls
        key = (tool, status)
        calls[key] = calls.get(key, 0) + 1
        counts = tally.durations.get(tool)
        if counts is None:
            counts = tally.durations[tool] = [0.0] * (len(DURATION_BUCKETS) + 2)
        counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # the first bucket with seconds <= its bound
        counts[-1] += seconds

    def _new_tally(self) -> _Tally:
        tally = self._local.tally = _Tally()
        with self._lock:
            self._retire()
            self._tallies.append((threading.current_thread(), tally))
        return tally

    def _retire(self) -> None:
        """Fold the tallies of ended threads into one (no thread writes them any more): a worker that runs
        each call on a new thread keeps one tally per live thread, not one per thread it ever ran. Locked."""
        live = []
        for thread, tally in self._tallies:
            if thread.is_alive():
                live.append((thread, tally))
            else:
                self._retired.add(tally)
        self._tallies = live

    def _total(self) -> _Tally:
        total = _Tally()
        with self._lock:
            self._retire()
            total.add(self._retired)
            tallies = [tally for _, tally in self._tallies]
        for tally in tallies:  # read while their threads write: each int read is whole, old or new
            total.add(tally)
        return total

    def stream_sent(self, tool: str, chunks: int, nbytes: int) -> None:
        if chunks:
            self._child(self.chunks, tool).inc(chunks)
        if nbytes:
            self._child(self.bytes, tool).inc(nbytes)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format (version 0.0.4)."""
    data: bytes = prometheus_client.generate_latest(registry)
    return data


# connections served at once; more are closed at once (a scraper needs one, a few more for curl and a second one)
MAX_CONNECTIONS = 16
# seconds a connection may be silent (socket timeout), and may take to send its whole request (headers)
READ_TIMEOUT_S = 5.0
REQUEST_DEADLINE_S = 10.0
# the longest a refused request holds its thread: past it the connection is closed unanswered
MAX_HOLD_S = 10.0


class _MetricsHandler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = READ_TIMEOUT_S  # StreamRequestHandler sets it on the socket: every read and write
    server_version = "krait-metrics"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # the whole request (TLS handshake, request line, headers) within REQUEST_DEADLINE_S, or the socket is
        # shut: a client sending a byte every few seconds cannot keep a thread forever
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._cut)
        self._deadline.daemon = True
        self._deadline.start()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._deadline.cancel()
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._deadline.cancel()
        security = self.server.security
        if not security.host_allowed(self.headers.get("Host", "")):
            self._reply(403, b"this worker does not serve that host name\n")
            return
        if security.token:
            given = self.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not security.token_matches(credential.strip()):
                delay = PENALTY.delay()
                time.sleep(min(delay, MAX_HOLD_S))
                if delay > MAX_HOLD_S:
                    self.close_connection = True
                    return
                what = "a wrong token" if credential else "no token"
                log.warning("metrics: refused %s from %s", what, self.client_address[0])
                self._reply(401, b"a token is required: Authorization: Bearer <token>\n", bearer=True)
                return
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, b"metrics are at /metrics\n")
            return
        self._reply(200, exposition(self.server.registry), content_type=prometheus_client.CONTENT_TYPE_LATEST)

    def _reply(self, status: int, body: bytes, *, content_type: str = "text/plain", bearer: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if bearer:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` over HTTP or HTTPS with the worker's :class:`ServerSecurity`, one daemon thread per connection
    and at most :data:`MAX_CONNECTIONS` of them."""

    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS

    def __init__(self, host: str, port: int, registry: CollectorRegistry, security: ServerSecurity) -> None:
        self.registry = registry
        self.security = security
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._tls = security.ssl_context()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _MetricsHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self._tls is not None:  # the handshake runs on the connection's thread, under its timeouts
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._slots.acquire(blocking=False)  # False: closed unanswered

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that goes away, times out or fails the TLS handshake: nothing to print a traceback about
        log.debug("metrics: connection from %s failed", client_address[0] if client_address else "?", exc_info=True)


def serve_http(
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry = REGISTRY,
    security: ServerSecurity | None = None,
) -> tuple[MetricsServer, int]:
    """Serve ``/metrics`` on ``host:port`` (0: a free port) on a daemon thread, with ``security``'s TLS, token and
    Host rules; returns the server and its port. Raises OSError when the port cannot be bound, ``ssl.SSLError``
    for unusable TLS files."""
    server = MetricsServer(host, port, registry, security or ServerSecurity())
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server, int(server.server_address[1])
