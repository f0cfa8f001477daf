"""The gRPC front's server: the ToolWorker service (:mod:`.servicer`), health and reflection, budgets for the
non-tool streams (:mod:`.aux_streams`), and TLS and the token check (:mod:`.security`), on one address.

It is a ``grpc.aio`` server on a thread and event loop of its own, started and stopped with the worker. Why
asyncio: grpcio's sync server holds one thread per call from its headers on, also while the call waits for its
request message, so a few dozen half-open calls (headers, never a message; no token needed to send them) took
every thread of a worker and froze it. On ``grpc.aio`` such a call, and a refused one, is a coroutine: it holds
no thread and no call slot. Tool code runs where it always has (the engine), on a bounded executor: the
engine's call slots and a few threads more for the short work beside them (accepting or refusing a call,
sessions, metrics).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ...engine import Engine
from ...proto import SERVICE_NAME
from ..security import ServerSecurity
from .aux_streams import AuxStreamLimit
from .channel import server_options
from .security import interceptors, server_credentials
from .servicer import ToolWorkerServicer, register

log = logging.getLogger("krait.worker")

T = TypeVar("T")

# executor threads beyond the call slots: a refused or session call, a Metrics call, beside full slots
SPARE_THREADS = 8
# how long the constructor waits for the server to be built and bound
START_TIMEOUT_S = 30.0


class GrpcServer:
    """The gRPC front: the ToolWorker service, health and reflection, on ``host:port`` (0: a free one,
    :attr:`port` once bound). Binding fails in the constructor (``on_fail`` is called, then RuntimeError)."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        max_calls: int,
        max_message_bytes: int,
        on_fail: Callable[[], None],
        security: ServerSecurity | None = None,
    ) -> None:
        security = security or ServerSecurity()
        self._executor = futures.ThreadPoolExecutor(max_workers=max_calls + SPARE_THREADS, thread_name_prefix="grpc")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-front", daemon=True)
        self._thread.start()
        self.health = health_aio.HealthServicer()
        try:
            self.server: aio.Server = self._run(self._build(engine, security, max_calls, max_message_bytes))
            self.port: int = self._run(self._bind(f"{host}:{port}", security))
        except RuntimeError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc)
            self._close_loop()
            on_fail()
            raise

    async def _build(
        self, engine: Engine, security: ServerSecurity, max_calls: int, max_message_bytes: int
    ) -> aio.Server:
        # created on its loop: grpc.aio binds a server to the loop it is made on
        server = aio.server(
            options=server_options(max_message_bytes, max_calls),
            interceptors=[*interceptors(security), AuxStreamLimit()],  # the token first
        )
        self._servicer = ToolWorkerServicer(engine, self._executor)
        register(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        return server

    async def _bind(self, address: str, security: ServerSecurity) -> int:
        credentials = server_credentials(security)
        if credentials is None:
            return self.server.add_insecure_port(address)
        return self.server.add_secure_port(address, credentials)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> int:
        async def start() -> None:
            await self.server.start()
            for name in ("", SERVICE_NAME):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

        self._run(start())
        return self.port

    def stop(self, grace: float, wait: float) -> None:
        """Refuse new calls; in-flight ones get ``grace`` seconds before they are cancelled; wait at most
        ``wait`` seconds for them to end."""
        end = time.monotonic() + wait

        async def stop() -> None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
            # the calls are over (cancelled past the grace): let their threads hand back what they were doing
            # while the loop still runs, so nothing lands on a closed loop
            pending = self._servicer.pending
            if pending:
                await asyncio.wait(set(pending), timeout=max(0.0, end - time.monotonic()))

        try:
            self._run(stop(), timeout=wait + 1.0)  # stop() itself ends by ``end``: this only guards a stuck loop
        except (futures.TimeoutError, RuntimeError) as exc:
            log.warning("the gRPC front did not stop within %.1f s: %s", wait, exc or "timed out")
        self._close_loop()
        # tools that ignore cancellation keep their threads; nobody waits for them here (see serve.py)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _close_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
