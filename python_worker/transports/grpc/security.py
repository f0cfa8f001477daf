"""Who may call a worker over gRPC: the serving rules of :mod:`..security` as grpcio's server credentials and a
token interceptor, and a client's TLS and token.

The token is checked by a server interceptor on every RPC but the health service's (a load balancer's or
Kubernetes' probe carries no token); reflection is behind it, so only an authenticated caller can list the
services. The comparison is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ..security import SecurityConfigError, ServerSecurity, read_file

log = logging.getLogger("krait.worker")

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def server_credentials(security: ServerSecurity) -> grpc.ServerCredentials | None:
    """The server's TLS credentials (None: plain text)."""
    files = security.tls_files()
    if files is None:
        return None
    key, cert, client_ca = files
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def interceptors(security: ServerSecurity) -> list[grpc.ServerInterceptor]:
    """The token check, when the worker has a token."""
    return [TokenCheck(security.token)] if security.token else []


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every RPC but health checks without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
                break
        if hmac.compare_digest(given.encode("utf-8", "replace"), self._expected):
            return continuation(handler_call_details)
        reason = "no authorization metadata" if not given else "a wrong token"
        log.warning("%s refused: UNAUTHENTICATED (%s)", method, reason)
        handler = continuation(handler_call_details)
        return _refusal(handler, f"{method} needs 'authorization: Bearer <token>' with this worker's token")


def _refusal(handler: Any, message: str) -> Any:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED (an unknown method too)."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(abort)
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


@dataclass(slots=True, frozen=True)
class ClientTLS:
    """A client's TLS: ``ca`` the PEM file of the CA that signed the worker's certificate (None: the system's
    roots), ``cert``/``key`` the client's own certificate for mutual TLS, ``server_name`` the name to verify
    when it is not the target's host."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise SecurityConfigError("a client certificate and its key go together: give both or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=read_file(self.ca, "CA file") if self.ca else None,
            private_key=read_file(self.key, "client key file") if self.key else None,
            certificate_chain=read_file(self.cert, "client certificate file") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),) if token else ()
