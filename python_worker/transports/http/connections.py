"""The HTTP front's connections: a deadline for receiving each request head, and a budget of connections.

uvicorn has no deadline for receiving a request (its ``timeout_keep_alive`` only covers the idle time between
requests and is reset by every byte: uvicorn issue #157), so 120 sockets that send half a request head and stop
hold a front for as long as they like. :class:`GuardedH11` wraps uvicorn's h11 protocol: from accept (or from the
end of the previous response on a kept-alive connection) a connection has :attr:`Limits.receipt_timeout_s` to
deliver a complete request head, whatever it sends meanwhile (the clock is not reset by a byte); then it is
closed. The deadline is disarmed once the head is complete (the app has the request: a body is read by the
routes, which authenticate first and bound its size) and on a WebSocket upgrade.

Under TLS the front does the handshake itself (``loop.start_tls`` once a connection is admitted) rather than
leave it to uvicorn, where asyncio would give a handshake 60 s outside the budget: a TLS connection is counted and
its receipt deadline armed at accept, so the handshake and the request head share the one deadline, and a socket
that never finishes its handshake is a waiter like any other (closed at the deadline, or evicted first).

The budget (:class:`Connections`): at most :attr:`Limits.max_connections` open at once (uvicorn's
``limit_concurrency`` answers 503 to everyone instead, which is what an attacker wants), and at most
:attr:`Limits.max_waiting` of them waiting for a request head. A connection over either limit makes room by
closing the connection that has waited longest for its head: a client that sends its request at once (any right
token caller) is never the oldest waiter for long, while slow sockets are. A per-address cap would not help on
loopback, where every local client is 127.0.0.1 (it would cap right-token callers with the attacker), so the
per-address cap (:attr:`Limits.max_waiting_per_client`) only applies to other addresses, where it keeps one
remote address from evicting everyone else's waiting connections. Closing a connection that has not sent its
request reveals nothing about any token; a connection holding a refused token (:mod:`.auth`) is never closed
early, as that would tell the guesser its answer before its penalty.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..security import is_loopback
from .defaults import RECEIPT_TIMEOUT_S

_BUSY = (
    b'{"error":{"type":"TooManyConnections","message":"the worker has too many open connections","code":"UNAVAILABLE"}}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)
LINGER_S = 2.0  # after answering a request whose body was not read: discard what still comes, then close
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def default_max_connections() -> int:
    """A quarter of the process's file descriptors (gRPC, sessions and tools need the rest), 64 to 2048."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(2048, (soft if soft > 0 else 1024) // 4))


@dataclass(frozen=True, slots=True)
class Limits:
    receipt_timeout_s: float = RECEIPT_TIMEOUT_S
    max_connections: int = field(default_factory=default_max_connections)
    max_waiting: int = 256
    max_waiting_per_client: int = 32


class Connections:
    """The open connections of one front and those waiting for a request head (oldest first). Used on the
    front's event loop only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[GuardedH11] = set()
        self.waiting: OrderedDict[GuardedH11, None] = OrderedDict()
        self._waiting_by_client: Counter[str] = Counter()
        self.timed_out = 0  # closed by the receipt deadline (tests, logs)
        self.evicted = 0  # closed to make room for a newer connection
        self.refused = 0  # refused at accept: no room and nobody waiting to evict

    def admit(self, conn: GuardedH11) -> bool:
        """A new connection: False when there is no room (it is then closed by the caller)."""
        if len(self.open) >= self.limits.max_connections and not self._evict(None):
            self.refused += 1
            return False
        self.open.add(conn)
        return True

    def wait(self, conn: GuardedH11) -> None:
        """``conn`` waits for a request head: room is made by closing the oldest waiters beyond the limits."""
        if conn in self.waiting or conn not in self.open:
            return
        self.waiting[conn] = None
        client = conn.client_host
        if not is_loopback(client):
            self._waiting_by_client[client] += 1
            if self._waiting_by_client[client] > self.limits.max_waiting_per_client:
                self._evict(client)
        while len(self.waiting) > self.limits.max_waiting and self._evict(None):
            pass

    def stop_waiting(self, conn: GuardedH11) -> None:
        if conn in self.waiting:
            del self.waiting[conn]
            client = conn.client_host
            if client in self._waiting_by_client:
                self._waiting_by_client[client] -= 1
                if self._waiting_by_client[client] <= 0:
                    del self._waiting_by_client[client]

    def gone(self, conn: GuardedH11) -> None:
        self.stop_waiting(conn)
        self.open.discard(conn)

    def _evict(self, client: str | None) -> bool:
        """Close the connection waiting longest for its head (from ``client`` only, when given)."""
        for conn in self.waiting:
            if client is None or conn.client_host == client:
                self.gone(conn)
                self.evicted += 1
                conn.close_waiting()
                return True
        return False


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with the receipt deadline and the connection budget of its front. Subclassed per
    server with :attr:`budget` set (uvicorn builds its protocols from a class)."""

    budget: Connections
    tls: ssl.SSLContext | None = None  # the front's TLS: the handshake is done here (see the module doc)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request head arrived since the deadline was armed
        self._lingering = False  # answered before the body was read: the rest is discarded until close
        self.client_host = ""
        self._raw: asyncio.Transport | None = None  # the TCP transport while its TLS handshake runs
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # bytes decrypted before the handshake's task resumed (see _handshake_tls)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.tls is not None:
            self._accept_tls(transport)
            return
        super().connection_made(transport)
        self.client_host = self.client[0] if self.client else ""
        if not self.budget.admit(self):
            transport.write(BUSY)
            transport.close()
            return
        self._arm()

    def _accept_tls(self, raw: asyncio.Transport) -> None:
        """A TCP connection to a TLS front: admitted and under the receipt deadline from now, then handshaken."""
        peer = raw.get_extra_info("peername")
        self.client_host = str(peer[0]) if peer else ""
        if not self.budget.admit(self):
            raw.close()  # no 503: plain text is not what a TLS client can read
            return
        raw.pause_reading()  # the first bytes are the TLS layer's, never h11's
        self._raw = raw
        self._arm()
        self._handshake = self.loop.create_task(self._handshake_tls(raw))

    async def _handshake_tls(self, raw: asyncio.Transport) -> None:
        assert self.tls is not None
        try:
            # the receipt deadline closes a slow handshake; asyncio's own timeout is only a backstop
            transport = await self.loop.start_tls(
                raw,
                self,
                self.tls,
                server_side=True,
                ssl_handshake_timeout=self.budget.limits.receipt_timeout_s + 1,
            )
        except (OSError, asyncio.CancelledError):  # ssl.SSLError, a reset, the backstop, the front stopping
            transport = None
        finally:
            self._handshake = None
        if transport is None or transport.is_closing():  # failed, or closed meanwhile (deadline, eviction)
            self._disarm()
            self.budget.gone(self)
            raw.close()
            return
        self._raw = None
        # h11 takes over the TLS transport; the deadline armed at accept keeps running for the request head
        super().connection_made(transport)
        # asyncio reads the first request's bytes as the handshake completes, before this task resumes
        early, self._early = b"".join(self._early), []
        if early:
            self.data_received(early)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.budget.gone(self)
        if self.transport is None:  # lost during its TLS handshake: h11 never had it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:  # TLS: decrypted before h11 has its transport (at most one read's worth)
            self._early.append(data)
            return
        if self._lingering:
            return
        if self._deadline is not None:
            self._partial = True
        super().data_received(data)
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:
            self._disarm()  # the request head is complete: the routes have it

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)
        # the WebSocket's protocol now owns the transport: keep its connection counted until it closes
        protocol = self.transport.get_protocol()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self.budget.gone(self)
            lost(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]

    def on_response_complete(self) -> None:
        if not self.transport.is_closing() and self.conn.their_state not in (h11.DONE, h11.IDLE):
            # answered before its body was read (a refusal, a body over the limit): the connection ends
            self._linger()
            return
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # kept alive: the next request head is due within the deadline too

    def _linger(self) -> None:
        """End a connection whose request body is still coming: close our side, discard what arrives for
        :data:`LINGER_S` at most, then close. Closing at once, with unread bytes, would send a reset, which makes
        the client's kernel drop the answer it has not read yet (the 413 would never be seen)."""
        self._lingering = True
        self._disarm()
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._deadline = self.loop.call_later(self.budget.limits.receipt_timeout_s, self._expired)
        self.budget.wait(self)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.budget.stop_waiting(self)

    def _expired(self) -> None:
        self._deadline = None
        self.budget.timed_out += 1
        self.budget.gone(self)
        self.close_waiting()

    def close_waiting(self) -> None:
        """Close a connection that has not delivered its request head (a 408 when it had begun one)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._raw is not None:  # still in its TLS handshake
            self._raw.close()
            return
        if not self.transport.is_closing():
            if self._partial:
                self.transport.write(TIMED_OUT)
            self.transport.close()


def protocol_class(connections: Connections, tls: ssl.SSLContext | None = None) -> type[GuardedH11]:
    """A :class:`GuardedH11` bound to ``connections`` (one per front), serving TLS with ``tls`` when given."""
    return type("KraitH11", (GuardedH11,), {"budget": connections, "tls": tls})
