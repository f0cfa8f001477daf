"""Serving a worker: the gRPC server, health and reflection, readiness, and the ways a worker stops.

A worker stops on SIGTERM/SIGINT, and by itself when its stdin (a pipe from its supervisor) closes, so no
worker outlives a crashed supervisor. Readiness is announced once serving, on stdout as
``KRAIT_READY {"port": ..., "pid": ..., "worker_id": ..., "adapter": ...}`` and in the ready file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..proto import SERVICE_NAME
from ..sdk import load_adapter
from . import aio_runner
from .servicer import ToolWorkerServicer, register
from .sessions import SessionStore

log = logging.getLogger("krait.worker")

READY_PREFIX = "KRAIT_READY "

# How long a thread may hold the GIL while another waits (CPython's default is 5 ms). grpcio delivers a
# cancellation on its completion-queue thread, which must win the GIL from a busy tool thread and the thread
# sending its chunks; at 5 ms, a cancelled busy generator took up to ~75 ms (p99) to reach its `finally`, at
# 2 ms ~16 ms, with no measurable cost to throughput (1 ms cost ~20% of small-chunk throughput).
SWITCH_INTERVAL_S = 0.002


@dataclass(slots=True)
class ServeOptions:
    adapter: str
    host: str = "127.0.0.1"
    port: int = 0
    worker_id: str = ""
    ready_file: str | None = None
    max_message_bytes: int = 64 << 20
    max_calls: int = 32
    session_ttl: float = 3600.0
    stdin_watch: bool | None = None  # None: watch when stdin is a pipe or socket
    grace: float = 2.0


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message-size and keepalive options, shared by the server and Krait's Python client."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # clients may ping every 10 s without being sent GOAWAY too_many_pings
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _watch_stdin(stop: threading.Event) -> None:
    # os.read on the raw descriptor: a thread blocked in sys.stdin's buffered reader holds its lock and makes
    # interpreter shutdown abort
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    log.info("stdin closed: the supervisor has gone, stopping")
    stop.set()


def _should_watch_stdin() -> bool:
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _announce(options: ServeOptions, port: int) -> None:
    info = {"port": port, "pid": os.getpid(), "worker_id": options.worker_id, "adapter": options.adapter}
    line = json.dumps(info)
    if options.ready_file:
        path = Path(options.ready_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(line + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file
    sys.stdout.write(READY_PREFIX + line + "\n")
    sys.stdout.flush()


def serve(options: ServeOptions) -> int:
    """Run a worker until it is told to stop; returns the process exit code."""
    options.worker_id = options.worker_id or f"worker-{os.getpid()}"
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    adapter = load_adapter(options.adapter)
    sessions = SessionStore(ttl=options.session_ttl, on_end=adapter.on_session_end)
    servicer = ToolWorkerServicer(
        adapter,
        adapter_path=options.adapter,
        worker_id=options.worker_id,
        sessions=sessions,
        max_calls=options.max_calls,
        max_message_bytes=options.max_message_bytes,
    )
    # One thread per in-flight RPC (grpcio's sync server): room for every tool call plus health checks and
    # pings, so those never starve behind long streams.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_calls + 8, thread_name_prefix="grpc"),
        options=[*channel_options(options.max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    register(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(f"{options.host}:{options.port}")
    except RuntimeError as exc:
        raise SystemExit(f"cannot listen on {options.host}:{options.port}: {exc}") from None
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if options.stdin_watch if options.stdin_watch is not None else _should_watch_stdin():
        threading.Thread(target=_watch_stdin, args=(stop,), name="stdin-watch", daemon=True).start()

    log.info("worker %s serving %s on %s:%d", options.worker_id, options.adapter, options.host, port)
    _announce(options, port)
    while not stop.wait(3600):
        pass
    log.info("worker %s stopping", options.worker_id)
    health_servicer.enter_graceful_shutdown()
    server.stop(options.grace).wait()
    aio_runner.shutdown(options.grace)
    sessions.close()
    try:
        adapter.close()
    except Exception:
        log.exception("adapter close() failed")
    return 0
