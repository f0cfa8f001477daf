"""MCP's Streamable HTTP at ``/mcp`` on the HTTP front: the ``mcp`` package's session manager behind the
front's own gate.

Every request to ``/mcp`` first passes :meth:`..http.front.Front.guard`, as every ``/v1`` route does: the Host
check, the origin checks, the token (``Authorization: Bearer``; a wrong or missing one answered 401 after the
shared penalty, :meth:`~..http.front.Front.refusal`) and a stopping worker's 503. The package's own DNS-rebinding
settings are left off: the front's are the rules. A body over the front's JSON limit is refused 413 with a
JSON-RPC error before it is read (the package refuses a chunked one as it passes the limit).

A client that cuts a call's response stream cancels that call (nothing could resume it: there is no event
store), although the package keeps its session: a vanished client's endless stream must not hold a call slot
until the worker stops.

Sessions are stateful (``Mcp-Session-Id``): each MCP session is a Krait session, ``mcp:<Mcp-Session-Id>`` (the
state a tool keeps with ``ctx.session``). Responses to calls are SSE streams, so a stream's progress reaches the
client as it happens. Calls count against ``--max-calls`` with every other front's, and the worker's stop
cancels them with the rest (:meth:`~..http.front.Front.cancel_all`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import INVALID_REQUEST
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .calls import Calls
from .server import build_server

if TYPE_CHECKING:
    from ..http.front import Front

SESSION_IDLE_TIMEOUT_S = 30 * 60  # an MCP session with nothing in flight for this long is closed (the package's)
MAX_SESSIONS = 1000


def _headers(ctx: Any) -> Any:
    request = getattr(ctx, "request", None)
    return getattr(request, "headers", None) or {}


def _call_ids(body: bytes) -> list[Any]:
    """The ids of the ``tools/call`` requests in a POSTed message (or batch)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    messages = value if isinstance(value, list) else [value]
    return [m.get("id") for m in messages if isinstance(m, dict) and m.get("method") == "tools/call" and "id" in m]


class McpEndpoint:
    """The ASGI app at ``/mcp``; :meth:`running` must be entered while the front serves."""

    def __init__(self, front: Front) -> None:
        self.front = front

        def session_of(ctx: Any) -> str | None:
            session = _headers(ctx).get(MCP_SESSION_ID_HEADER)
            return f"mcp:{session}" if session else None

        self.calls = calls = Calls(
            front.engine,
            front.executor,
            track=front.track,
            session_of=session_of,
            metadata_of=lambda ctx: front.metadata(_headers(ctx)),
            is_stopping=lambda: front.stopping,
        )
        self.manager = StreamableHTTPSessionManager(
            app=build_server(front.engine, calls),
            json_response=False,
            stateless=False,
            security_settings=None,  # the front's Host and Origin checks apply (Front.guard)
            max_request_body_size=front.max_body_bytes,
            session_idle_timeout=SESSION_IDLE_TIMEOUT_S,
            max_sessions=MAX_SESSIONS,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        try:
            self.front.guard(conn, scope.get("method", "GET"))
        except Exception as exc:
            response = await self.front.refusal(exc, f"{scope.get('method', '')} /mcp")
            await response(scope, receive, send)
            return
        try:
            size = int(conn.headers.get("content-length") or 0)
        except ValueError:
            size = 0
        if size > self.front.max_body_bytes:
            await self._too_large(size)(scope, receive, send)
            return
        if scope.get("method") != "POST":
            await self.manager.asgi_app(scope, receive, send)
            return
        body = bytearray()

        async def receive_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= self.front.max_body_bytes:
                body.extend(message.get("body", b""))
            return message

        await self.manager.asgi_app(scope, receive_body, send)
        # the response has ended: a call of this request still running lost its stream (the client cut it)
        session = conn.headers.get(MCP_SESSION_ID_HEADER)
        for request_id in _call_ids(bytes(body)):
            self.calls.abandon(f"mcp:{session}" if session else None, request_id)

    def _too_large(self, size: int) -> Response:
        message = f"a request body of {size} bytes, over this worker's limit ({self.front.max_body_bytes} bytes)"
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}}
        # the body is not read: the connection ends after this answer
        return Response(
            orjson.dumps(body), status_code=413, media_type="application/json", headers={"connection": "close"}
        )
