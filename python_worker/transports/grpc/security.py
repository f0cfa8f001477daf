"""Who may call a worker over gRPC: TLS (mutual when a client CA is given), a bearer token, and the refusal to
serve a non-loopback address without them.

The token is checked by a server interceptor on every RPC but the health service's (a load balancer's or
Kubernetes' probe carries no token); reflection is behind it, so only an authenticated caller can list the
services. The comparison is constant-time (``hmac.compare_digest``). The local link (stdin/stdout) is the
pool's own pipe and is not gated.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("krait.worker")

TOKEN_ENV = "KRAIT_TOKEN"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class SecurityConfigError(ValueError):
    """The serving or client security options are unusable (the message says which and why)."""


def read_token(path: str | None, *, env: bool = True) -> str | None:
    """The token from ``path`` (surrounding whitespace dropped), else from ``$KRAIT_TOKEN`` when ``env``."""
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise SecurityConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        if not token:
            raise SecurityConfigError(f"the token file {path} is empty")
        return token
    if env and os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    return None


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a wildcard or a name is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(slots=True, frozen=True)
class ServerSecurity:
    """TLS files (PEM paths), the token, and ``insecure`` (serve a routable address without them)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line or traceback
    insecure: bool = False

    def check(self, host: str) -> None:
        """Raise :class:`SecurityConfigError` for options that cannot work or would expose the worker."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SecurityConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        if is_loopback(host) or self.insecure:
            return
        # a token in plain text can be read off the network; TLS alone lets anyone who reaches the port call
        if not self.tls_cert or not (self.token or self.tls_client_ca):
            missing = "TLS (--tls-cert/--tls-key)" if not self.tls_cert else "a token (--token-file or $KRAIT_TOKEN)"
            raise SecurityConfigError(
                f"refusing to serve {host}, which is not a loopback address, without {missing}: anyone who reaches "
                "the port could call every tool and read every session. Serve it with TLS and a token (or a "
                "client CA, --tls-client-ca), or pass --insecure to do it anyway."
            )

    def credentials(self) -> grpc.ServerCredentials | None:
        """The server's TLS credentials (None: plain text)."""
        if not self.tls_cert or not self.tls_key:
            return None
        client_ca = _read(self.tls_client_ca, "client CA file") if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(_read(self.tls_key, "TLS key file"), _read(self.tls_cert, "TLS certificate file"))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenCheck(self.token)] if self.token else []

    def describe(self) -> str:
        parts = ["mutual TLS" if self.tls_client_ca else "TLS" if self.tls_cert else "plain text"]
        if self.token:
            parts.append("token")
        return " + ".join(parts)


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
            root_certificates=_read(self.ca, "CA file") if self.ca else None,
            private_key=_read(self.key, "client key file") if self.key else None,
            certificate_chain=_read(self.cert, "client certificate file") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),) if token else ()
