"""The gRPC front's server: the ToolWorker service (:mod:`.servicer`), health and reflection, a cap on the
non-tool streams (:mod:`.aux_streams`), and TLS and the token check (:mod:`.security`), on one address."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ...engine import Engine
from ...proto import SERVICE_NAME
from ..security import ServerSecurity
from .aux_streams import MAX_AUX_STREAMS, AuxStreamLimit
from .channel import channel_options
from .security import interceptors, server_credentials
from .servicer import ToolWorkerServicer, register

log = logging.getLogger("krait.worker")


class GrpcServer:
    """The gRPC front: the ToolWorker service, health and reflection, on ``options.host:options.port``."""

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
        # One thread per in-flight RPC (grpcio's sync server): room for every tool call, every reflection or
        # health-watch stream allowed, and the short calls (pings, health checks, refusals) beside them.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_calls + MAX_AUX_STREAMS + 8, thread_name_prefix="grpc"),
            options=[*channel_options(max_message_bytes), ("grpc.so_reuseport", 0)],
            interceptors=[*interceptors(security), AuxStreamLimit(SERVICE_NAME)],  # the token first
        )
        register(ToolWorkerServicer(engine), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        try:
            credentials = server_credentials(security)
            address = f"{host}:{port}"
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc)
            on_fail()
            raise

    def start(self) -> int:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def stop(self, grace: float, wait: float) -> None:
        """Refuse new calls; in-flight ones get ``grace`` seconds before they are cancelled; wait at most
        ``wait`` seconds for them to end."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(wait)
