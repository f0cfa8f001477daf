"""The HTTP front's server: uvicorn on a thread of its own, with its own event loop, started and stopped with
the worker (``serve --http-port``).

The listening socket is bound here, before the thread starts, so that a port in use is reported at start-up like
gRPC's and the port 0 picks is known at once. TLS uses the worker's ``--tls-cert``/``--tls-key`` (and
``--tls-client-ca``: client certificates required); the token is the worker's (:mod:`.auth`). Connections are
uvicorn's h11 protocol wrapped with a deadline for each request head and a budget (:mod:`.connections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from typing import Any

from ...engine import Engine
from ..security import ServerSecurity
from .defaults import MAX_JSON_BYTES, RECEIPT_TIMEOUT_S

log = logging.getLogger("krait.worker")

MISSING = (
    "--http-port needs the HTTP front's libraries (Starlette, uvicorn, websockets), which are not installed: "
    "pip install 'krait[http]'"
)


class HttpUnavailable(RuntimeError):
    """The ``http`` extra is not installed."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and
    # accepted sockets inherit it; with Nagle on, every response after the first on a kept-alive connection
    # waited ~40 ms for the client's delayed ACK (headers and body are two writes)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class HttpServer:
    """The HTTP front on ``host:port`` (0: a free port, :attr:`port` once bound). Raises :class:`HttpUnavailable`
    without the ``http`` extra, ``OSError`` when it cannot listen."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        security: ServerSecurity,
        max_message_bytes: int,
        max_json_bytes: int = MAX_JSON_BYTES,
        receipt_timeout_s: float = RECEIPT_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None:
        try:
            import uvicorn

            from .app import build_app
            from .auth import Auth
            from .connections import Connections, Limits, default_max_connections, protocol_class
            from .front import Front
        except ImportError as exc:
            raise HttpUnavailable(f"{MISSING} ({exc})") from None
        # a JSON body is parsed into Python objects many times its size: its own, smaller limit
        body_limit = min(max_message_bytes, max_json_bytes)
        self.front = Front(engine, Auth(security), max_body_bytes=body_limit)
        self.connections = Connections(
            Limits(receipt_timeout_s=receipt_timeout_s, max_connections=max_connections or default_max_connections())
        )
        self.sock = _bind(host, port)
        self.port: int = self.sock.getsockname()[1]
        # TLS is not uvicorn's: the front's protocol handshakes under its receipt deadline (connections.py)
        tls = security.ssl_context()
        config = uvicorn.Config(
            build_app(self.front),
            loop="asyncio",
            # uvicorn's h11 protocol with a deadline for each request head and a connection budget
            http=protocol_class(self.connections, tls),
            ws="websockets-sansio",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            ws_max_size=body_limit,
            # no limit_concurrency: its 503 for everyone is what a flood wants; connections.py budgets instead
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # TLS files that do not load, ...
            self._error = exc
            log.error("the HTTP front failed: %s", exc)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        mcp = self.front.mcp  # MCP's Streamable HTTP sessions live while the front serves
        async with mcp.running() if mcp is not None else contextlib.nullcontext():
            await self.server.serve(sockets=[self.sock])

    def start(self) -> int:
        """Serve; returns the port once listening. Raises what keeps it from serving."""
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP front did not start: {self._error}")
            time.sleep(0.005)
        return self.port

    def stop(self, grace: float, wait: float) -> None:
        """Refuse new calls; calls in flight get ``grace`` seconds, then are cancelled (their tools stopped);
        wait at most ``wait`` seconds for the server to close."""
        end = time.monotonic() + wait
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            deadline = time.monotonic() + min(grace, wait)
            loop.call_soon_threadsafe(_stop_new, self.front)
            while self.front.in_flight and time.monotonic() < deadline:
                time.sleep(0.01)
            loop.call_soon_threadsafe(self.front.cancel_all)
        self.server.should_exit = True
        self._thread.join(max(0.0, end - time.monotonic()))
        self.front.executor.shutdown(wait=False, cancel_futures=True)
        self.front.parsers.shutdown(wait=False, cancel_futures=True)
        self.sock.close()


def _stop_new(front: Any) -> None:
    front.stopping = True
