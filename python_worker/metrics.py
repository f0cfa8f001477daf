"""A worker's Prometheus metrics: what its engine counts, what its adapter declares, the process's own.

One registry per worker process (:data:`REGISTRY`), built on ``prometheus-client`` (the Prometheus project's own
Python client: the text format, histograms, the process collector and an HTTP server are all there). The engine
counts each call once it ends (:meth:`WorkerMetrics.call_ended`) and a stream's chunks and bytes per batch it
sends, never per chunk: the hot path pays a few counter increments per call. Adapters declare their own metrics
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
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        # what a call's end counts, by (tool, status): its calls counter and its duration histogram, in one lookup
        self._ended: dict[tuple[str, str], tuple[Any, Any]] = {}
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
        children = self._ended.get((tool, status))
        if children is None:
            children = self._ended.setdefault(
                (tool, status), (self._child(self.calls, tool, status), self._child(self.duration, tool))
            )
        children[0].inc()
        children[1].observe(seconds)

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
        self._tls: ssl.SSLContext | None = None
        if security.tls_cert and security.tls_key:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(security.tls_cert, security.tls_key)
            if security.tls_client_ca:
                tls.load_verify_locations(security.tls_client_ca)
                tls.verify_mode = ssl.CERT_REQUIRED
            self._tls = tls
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
