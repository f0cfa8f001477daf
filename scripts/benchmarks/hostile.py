"""Row 12: a right-token caller's latency while unauthenticated clients hold a worker's fronts open.

One worker serves gRPC and HTTP with a token. The idle figure and the figure under attack are measured in the
same run, on the same worker, idle first:

- Ping p50/p99 over gRPC (the Python client, the right token), and ``GET /v1/tools`` over HTTP (bearer);
- then the attack: ``HALF_OPEN`` gRPC calls without a token that send their headers and never their request
  message (raw HTTP/2 from the ``h2`` library, ``STREAMS_PER_CONNECTION`` per connection), and ``SLOW_SOCKETS``
  HTTP sockets that send part of a request head and stop; while they are held, the same two measurements.

The worker answers the unauthenticated calls only after the penalty schedule (``transports/security.py``), so
they stay held during the measurement; the slow sockets until the HTTP front's request-receipt deadline.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import httpx
import numpy as np

from python_worker.client import Client
from python_worker.transports.security import TOKEN_ENV
from tests.workers import running_worker

HALF_OPEN = 1000
STREAMS_PER_CONNECTION = 50
SLOW_SOCKETS = 120


def _half_open(host: str, port: int, streams: int) -> socket.socket:
    """A connection holding ``streams`` ExecuteTool calls with headers and no token, never their message."""
    sock = socket.create_connection((host, port), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    for _ in range(streams):
        conn.send_headers(
            conn.get_next_available_stream_id(),
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/krait.v1.ToolWorker/ExecuteTool"),
                (":authority", f"{host}:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
            end_stream=False,
        )
    sock.sendall(conn.data_to_send())
    return sock


def _slow(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(f"GET /v1/auth HTTP/1.1\r\nHost: {host}\r\n".encode())
    return sock


@contextlib.contextmanager
def attack(host: str, grpc_port: int, http_port: int, half_open: int, slow: int) -> Iterator[None]:
    socks: list[socket.socket] = []
    try:
        left = half_open
        while left > 0:
            socks.append(_half_open(host, grpc_port, min(STREAMS_PER_CONNECTION, left)))
            left -= STREAMS_PER_CONNECTION
        socks.extend(_slow(host, http_port) for _ in range(slow))
        time.sleep(0.5)  # let the worker take them all in
        yield
    finally:
        for sock in socks:
            sock.close()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def _timed(call: Any, failures: list[str]) -> float:
    """Milliseconds ``call`` took; a failure (refused, timed out) counts as the full wait and is noted."""
    started = time.perf_counter()
    try:
        call()
    except Exception as exc:
        failures.append(type(exc).__name__)
    return (time.perf_counter() - started) * 1000


def _measure(client: Client, http: httpx.Client, samples: int) -> dict[str, float]:
    grpc_ms, http_ms = [], []
    failures: list[str] = []
    for _ in range(samples):
        grpc_ms.append(_timed(lambda: client.ping(timeout=5), failures))
        http_ms.append(_timed(lambda: http.get("/v1/tools").raise_for_status(), failures))
    out: dict[str, float] = {"failed": float(len(failures))}
    out["ping_p50_ms"], out["ping_p99_ms"] = _percentiles(grpc_ms)
    out["http_p50_ms"], out["http_p99_ms"] = _percentiles(http_ms)
    return out


def benchmark(samples: int, *, half_open: int = HALF_OPEN, slow: int = SLOW_SOCKETS) -> dict[str, Any]:
    token = os.environ[TOKEN_ENV]
    host = "127.0.0.1"
    with running_worker("adapters.showcase:ShowcaseAdapter", "--http-port", "0", "--max-calls", "32") as worker:
        http_port = int(worker.info["http_port"])
        with (
            Client(worker.target, token=token, timeout=30) as client,
            httpx.Client(
                base_url=f"http://{host}:{http_port}", headers={"authorization": f"Bearer {token}"}, timeout=5
            ) as http,
        ):
            _measure(client, http, max(20, samples // 10))  # warm: both vCPUs awake, connections open
            idle = _measure(client, http, samples)
            with attack(host, worker.port, http_port, half_open, slow):
                held = _measure(client, http, samples)
    out = {f"hostile_idle_{k}": v for k, v in idle.items()}
    out |= {f"hostile_attack_{k}": v for k, v in held.items()}
    return out
