"""Who may call a worker over gRPC: the serving rules of :mod:`..security` as grpcio's server credentials and a
token interceptor (``grpc.aio``), and a client's TLS and token.

The token is checked by a server interceptor on every RPC but the health service's (a load balancer's or
Kubernetes' probe carries no token); reflection is behind it, so only an authenticated caller can list the
services. The comparison is :meth:`ServerSecurity.token_matches` (constant-time).

Guessing costs time, and no client can lock another out (nothing is keyed on the address: every local client is
127.0.0.1). A call with a wrong or missing token is refused (UNAUTHENTICATED) only after the worker-wide
:data:`..security.PENALTY` schedule says so, in a coroutine: it holds no thread, no call slot, and its request
is never decoded (the refusal handler reads no message, so a call that never sends one is refused all the same).
On one connection (grpc's peer string: address and port), calls wait for the connection's unproven calls ahead
of them, one at a time: a connection tests at most one guess per penalty, even if it sends a thousand at once,
and a right token sent beside wrong ones is not answered before them. A connection with no refusal pending, which
is every honest client's, is never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from ...errors import clip
from ..security import PENALTY, AuthPenalty, SecurityConfigError, ServerSecurity, read_file

log = logging.getLogger("krait.worker")

Context = aio.ServicerContext[Any, Any]

HEALTH_PREFIX = "/grpc.health.v1.Health/"
BEARER = "Bearer "
# connections with refusals pending tracked one by one; beyond, they share one turn (still one guess at a time)
MAX_TRACKED_PEERS = 4096


def server_credentials(security: ServerSecurity) -> grpc.ServerCredentials | None:
    """The server's TLS credentials (None: plain text)."""
    files = security.tls_files()
    if files is None:
        return None
    key, cert, client_ca = files
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def interceptors(security: ServerSecurity, penalty: AuthPenalty = PENALTY) -> list[aio.ServerInterceptor]:
    """The token check, when the worker has a token."""
    return [TokenCheck(security, penalty)] if security.token else []


class _Turns:
    """One turn at a time per connection, for calls whose token is not proven; a connection's entry lives only
    while calls wait on it (the map is bounded by the open connections, and by :data:`MAX_TRACKED_PEERS`)."""

    def __init__(self) -> None:
        self._peers: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._shared = asyncio.Lock()

    def busy(self, peer: str) -> bool:
        return peer in self._peers

    @contextlib.asynccontextmanager
    async def turn(self, peer: str) -> AsyncIterator[None]:
        entry = self._peers.get(peer)
        if entry is None:
            if len(self._peers) >= MAX_TRACKED_PEERS:
                async with self._shared:
                    yield
                return
            entry = self._peers[peer] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._peers[peer]


class TokenCheck(aio.ServerInterceptor):
    """Refuses every RPC but health checks without ``authorization: Bearer <token>`` (UNAUTHENTICATED), late (see
    the module doc); holds a right-token call only while refusals are pending on its connection."""

    def __init__(self, security: ServerSecurity, penalty: AuthPenalty = PENALTY) -> None:
        self._security = security
        self._penalty = penalty
        self._turns = _Turns()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        given: str | bytes = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value
                break
        handler = await continuation(handler_call_details)
        if isinstance(given, bytes):
            given = given.decode("latin-1")
        if given.startswith(BEARER) and self._security.token_matches(given[len(BEARER) :]):
            return self._gated(handler) if handler is not None else None
        reason = "no authorization metadata" if not given else "a wrong token"
        return self._refusal(handler, method, reason)

    def _gated(self, handler: Any) -> Any:
        """``handler``, waiting first for the refusals pending on its connection (none: no wait)."""
        turns = self._turns

        async def wait_turn(context: Context) -> None:
            peer = context.peer()
            if turns.busy(peer):
                async with turns.turn(peer):
                    pass

        if handler.request_streaming or handler.response_streaming:
            # streams: server streams (ExecuteStreamingTool*), ExecuteToolDuplex and reflection, wrapped alike
            return _wrapped(handler, wait_turn)

        behavior = handler.unary_unary

        async def unary(request: Any, context: Context) -> Any:
            if turns.busy(context.peer()):
                await wait_turn(context)
            return await behavior(request, context)

        return handler._replace(unary_unary=unary)

    def _refusal(self, handler: Any, method: str, reason: str) -> Any:
        """A handler that reads nothing and answers UNAUTHENTICATED once the penalty has passed."""
        turns, penalty = self._turns, self._penalty
        message = f"{clip(method)} needs 'authorization: Bearer <token>' with this worker's token"

        async def refuse(_requests: Any, context: Context) -> None:
            async with turns.turn(context.peer()):
                await asyncio.sleep(penalty.delay())
            log.warning("%s refused: UNAUTHENTICATED (%s)", clip(method), reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            await refuse(requests, context)
            yield  # never reached: an async generator, as a streaming handler must be

        # client-streaming shapes: the handler runs at once, without waiting for (or decoding) a message
        if handler is not None and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.stream_unary_rpc_method_handler(refuse)


def _wrapped(handler: Any, wait_turn: Callable[[Context], Awaitable[None]]) -> Any:
    """A streaming ``handler`` whose behavior first awaits ``wait_turn``."""
    if handler.request_streaming and handler.response_streaming:
        field = "stream_stream"
    elif handler.request_streaming:
        field = "stream_unary"
    else:
        field = "unary_stream"
    behavior = getattr(handler, field)
    if handler.response_streaming and inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await wait_turn(context)
            async for message in behavior(request, context):
                yield message

        return handler._replace(**{field: stream})

    async def call(request: Any, context: Context) -> Any:
        await wait_turn(context)
        return await behavior(request, context)

    return handler._replace(**{field: call})


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
