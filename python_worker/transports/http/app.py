"""The HTTP front's routes (Starlette) over one :class:`~python_worker.engine.Engine`.

Starlette and uvicorn (rather than aiohttp): Starlette is the routing, request and WebSocket layer and nothing
else, on the ASGI interface whose ``http.disconnect`` message tells a response at once that its client went
(what cancels a stream's tool, :mod:`.sse`); uvicorn serves it with flow control on every write (what lets a
slow client backpressure a tool) and with TLS from the same PEM files as gRPC. aiohttp would do the same jobs
but cancels a handler on disconnect only when asked to, and brings its own client and server stacks the worker
does not need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ...errors import CallError, WrongRpc
from .auth import COOKIE, SESSION_MAX_AGE_S, SUBPROTOCOL, offered_subprotocols, session_secret
from .calls import (
    Gone,
    build_request,
    max_rate,
    overflow,
    parse_args,
    run_unary,
    timeout_ms,
)
from .chunks import dumps, result_json
from .errors import HttpError, invalid, unauthenticated
from .feed import StreamFeed
from .front import JSON, Endpoint, Front
from .headers import SecurityHeaders
from .sse import SSEResponse, disconnected
from .websocket import Socket

log = logging.getLogger("krait.worker")

STATIC = Path(__file__).parent / "static"
LOGIN_MAX_BYTES = 4096  # POST /v1/login: {"token": "..."}, read before anyone is authenticated


def build_app(front: Front) -> Starlette:
    engine = front.engine

    guarded = front.guarded

    async def index(request: Request) -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return front.error_response(
                HttpError("this worker has no page (index.html)", code=grpc.StatusCode.NOT_FOUND), "GET /"
            )
        return FileResponse(page)

    async def auth_state(request: Request) -> Response:
        # a bearer here is checked like anywhere else: a wrong one is a guess, held and refused (no free oracle)
        try:
            front.auth.check_host(request.headers)
            front.auth.check_origin(request.headers, front.scheme)
            bearer = front.auth.bearer(request.headers) if front.auth.required else None
            if bearer is False:
                raise unauthenticated("a wrong token in 'Authorization: Bearer <token>'")
        except Exception as exc:
            return await front.refusal(exc, "GET /v1/auth")
        authenticated = bool(bearer) or front.auth.logged_in(request.headers, request.cookies)
        return Response(dumps({"required": front.auth.required, "authenticated": authenticated}), media_type=JSON)

    async def login(request: Request) -> Response:
        try:
            front.auth.check_host(request.headers)
            front.auth.check_origin(request.headers, front.scheme)
            body = await front.body(request, LOGIN_MAX_BYTES)
            try:
                given = orjson.loads(body)
            except (orjson.JSONDecodeError, RecursionError):  # orjson refuses nesting deeper than 1024
                given = None
            if not isinstance(given, dict) or not isinstance(given.get("token"), str):
                raise invalid('POST /v1/login needs a JSON body {"token": "..."}')
            if front.auth.required and not front.auth.token_matches(given["token"]):
                raise unauthenticated("a wrong token")
        except Exception as exc:
            return await front.refusal(exc, "POST /v1/login")
        session, secret = front.auth.sessions.create()
        # the secret goes to the page's script only; the cookie, which any port of this host receives, is
        # worthless without it
        response = Response(dumps({"session": secret, "max_age_s": SESSION_MAX_AGE_S}), media_type=JSON)
        response.set_cookie(COOKIE, session, **front.auth.cookie_attributes())  # type: ignore[arg-type]
        return response

    async def logout(request: Request) -> Response:
        try:
            front.auth.check_host(request.headers)
            front.auth.check_origin(request.headers, front.scheme)
        except Exception as exc:
            return front.error_response(exc, "POST /v1/logout")
        session = request.cookies.get(COOKIE, "")
        if front.auth.sessions.valid(session, session_secret(request.headers)):
            front.auth.sessions.drop(session)  # a cookie alone (replayed from another port) cannot end it
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", secure=front.auth.tls, httponly=True, samesite="strict")
        return response

    async def tools(request: Request) -> Response:
        return Response(front.tools_body, media_type=JSON)

    def check_kind(name: str, streaming: bool) -> None:
        spec = engine.specs.get(name)
        if spec is None or spec.supports_streaming == streaming:
            return  # an unknown tool: the engine refuses it with NOT_FOUND
        if spec.supports_streaming:
            raise WrongRpc(f"{name} is a streaming tool: call it with /v1/tools/{name}/stream")
        raise WrongRpc(f"{name} is not a streaming tool: call it with POST /v1/tools/{name}")

    async def call(request: Request) -> Response:
        name = request.path_params["name"]
        args_json = await front.args(await front.body(request), "the request body")
        deadline = timeout_ms(request.query_params.get("timeout_ms"))
        check_kind(name, streaming=False)
        req = build_request(name, args_json, request.query_params.get("session"), front.metadata(request.headers))
        stop = asyncio.Event()
        untrack = front.track(lambda _reason: stop.set())
        watcher = asyncio.ensure_future(disconnected(request.receive))
        watcher.add_done_callback(lambda _t: stop.set())
        try:
            response = await run_unary(
                engine, front.executor, req, req.metadata, deadline_ms=deadline, gone=stop.wait()
            )
        except Gone:
            if front.stopping:
                raise CallError("the worker is stopping", code=grpc.StatusCode.UNAVAILABLE) from None
            return Response(status_code=499)  # the client has gone: nobody reads this
        finally:
            watcher.cancel()
            untrack()
        return Response(result_json(response.data, response.content_type, response.metadata), media_type=JSON)

    async def stream(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "GET":
            args_json = parse_args(request.query_params.get("args", ""), "the args parameter")
        else:
            args_json = await front.args(await front.body(request), "the request body")
        query = request.query_params
        deadline = timeout_ms(query.get("timeout_ms"))
        rate = max_rate(query.get("max_rate_hz"))
        strategy = overflow(query.get("overflow"))
        check_kind(name, streaming=True)
        req = build_request(name, args_json, query.get("session"), front.metadata(request.headers))
        feed = StreamFeed(
            engine, req, req.metadata, executor=front.executor, overflow=strategy, max_rate_hz=rate, timeout_ms=deadline
        )
        untrack = front.track(feed.cancel)
        try:
            await feed.open()
        except BaseException:
            untrack()
            feed.cancel()
            raise
        return _Tracked(SSEResponse(feed, lambda exc: front.error(exc, "ExecuteStreamingTool", name)[1]), untrack)

    async def ws(websocket: WebSocket) -> None:
        try:
            front.guard(websocket, "WEBSOCKET")
        except HttpError as exc:
            await websocket.send_denial_response(await front.refusal(exc, "WebSocket"))
            return
        # the page offers krait.v1 and krait.session.<secret>: only krait.v1 is echoed (a browser refuses a
        # handshake whose answer names none of the protocols it offered)
        offered = offered_subprotocols(websocket.headers)
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        await Socket(front, websocket).serve()

    front.mcp = _mcp_endpoint(front)
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/auth", auth_state, methods=["GET"]),
        Route("/v1/login", login, methods=["POST"]),
        Route("/v1/logout", logout, methods=["POST"]),
        Route("/v1/tools", guarded("ListTools", tools), methods=["GET"]),
        Route("/v1/tools/{name}", guarded("ExecuteTool", call), methods=["POST"]),
        Route("/v1/tools/{name}/stream", guarded("ExecuteStreamingTool", stream), methods=["GET", "POST"]),
        WebSocketRoute("/v1/ws", ws),
        Route("/mcp", front.mcp or _no_mcp(front), methods=["GET", "POST", "DELETE"]),  # docs/mcp.md
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])


def _mcp_endpoint(front: Front) -> Any:
    """MCP's Streamable HTTP (python_worker.transports.mcp.http), or None without the mcp extra."""
    try:
        from ..mcp.http import McpEndpoint
    except ImportError:
        return None
    return McpEndpoint(front)


def _no_mcp(front: Front) -> Endpoint:
    async def unavailable(request: Request) -> Response:
        error = HttpError("this worker has no MCP front: pip install 'krait[mcp]'", code=grpc.StatusCode.UNIMPLEMENTED)
        return front.error_response(error, "MCP")

    return front.guarded("MCP", unavailable)


class _Tracked(Response):
    """An ASGI response that unregisters its call once it has been sent."""

    def __init__(self, inner: SSEResponse, untrack: Callable[[], None]) -> None:
        self.inner = inner
        self.untrack = untrack

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.untrack()
