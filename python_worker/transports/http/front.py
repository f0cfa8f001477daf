"""What the HTTP front's routes share (:class:`Front`): the engine and the executor its calls run on, the auth, the
calls in flight, bounded request bodies, and how an error becomes a response. The routes (:mod:`.app`), the
WebSocket (:mod:`.websocket`) and MCP's Streamable HTTP (:mod:`..mcp.http`) all take one; it imports none of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ...engine import Engine
from ...errors import CallError
from .auth import Auth, refusal_delay
from .calls import FORWARDED_HEADERS, parse_args
from .chunks import dumps
from .errors import HttpError, error_body, error_object

log = logging.getLogger("krait.worker")

JSON = "application/json"
Endpoint = Callable[[Request], Awaitable[Response]]
PARSE_INLINE_BYTES = 64 << 10  # JSON up to this size is parsed on the event loop; larger on the parser threads


class Front:
    """What the routes share: the engine, the executor its calls run on, the auth, the calls in flight."""

    def __init__(self, engine: Engine, auth: Auth, *, max_body_bytes: int) -> None:
        self.engine = engine
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        # a thread per call allowed (a unary tool, or a stream's pump), and a few for refusals beside them
        self.executor = ThreadPoolExecutor(max_workers=engine.max_calls + 4, thread_name_prefix="http")
        # large JSON bodies are parsed here, off the event loop: two at a time, whatever the number of callers
        self.parsers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="http-json")
        self.stopping = False
        self.mcp: Any = None  # MCP's Streamable HTTP at /mcp (build_app), when the mcp extra is installed
        self._live: set[Callable[[BaseException], None]] = set()
        self.tools_body = self._tools_body()

    def _tools_body(self) -> bytes:
        listing = self.engine.list_tools()
        tools = [
            {
                "name": t.name,
                "description": t.description,
                "streaming": t.supports_streaming,
                "parameters": json.loads(t.parameters_schema_json),
                "result": json.loads(t.result_schema_json) if t.result_schema_json else None,
                # the tool's input stream: one item's schema and the parameter (sent over /v1/ws with "input":
                # true, or given whole as a JSON array under that parameter)
                "input": json.loads(t.input_schema_json) if t.input_schema_json else None,
                "input_param": t.input_param or None,
            }
            for t in listing.tools
        ]
        return dumps({"worker_id": listing.worker_id, "adapter": listing.adapter, "tools": tools})

    # -- calls in flight ------------------------------------------------------------------------------------
    def track(self, cancel: Callable[[BaseException], None]) -> Callable[[], None]:
        """Register what cancels a call (the worker's stop calls it); returns what unregisters it."""
        self._live.add(cancel)
        return lambda: self._live.discard(cancel)

    def cancel_all(self) -> None:
        """The worker is stopping: refuse new calls, cancel every call in flight (on the loop)."""
        self.stopping = True
        reason = CallError("the worker is stopping", code=grpc.StatusCode.UNAVAILABLE, error_type="WorkerStopping")
        for cancel in list(self._live):
            cancel(reason)

    @property
    def in_flight(self) -> int:
        return len(self._live)

    # -- shared by the routes -------------------------------------------------------------------------------
    def metadata(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {key: headers[key] for key in FORWARDED_HEADERS if key in headers}

    def error(self, exc: BaseException, rpc: str, tool: str = "") -> tuple[int, dict[str, Any]]:
        if not isinstance(exc, CallError) and getattr(exc, "_krait_call", None) is None:
            # not a tool's failure but the front's own: logged with its traceback, answered without it (no
            # server path, no internals reach a remote caller)
            log.error("%s: the HTTP front failed on a request", rpc, exc_info=exc)
            return 500, {
                "type": "InternalError",
                "message": "the worker failed to handle this request (its log has the details)",
                "code": "INTERNAL",
            }
        return error_object(self.engine, exc, rpc, tool)

    def error_response(self, exc: BaseException, rpc: str, tool: str = "") -> Response:
        status, error = self.error(exc, rpc, tool)
        status = getattr(exc, "http_status", status)
        # a refused token closes its connection: the next guess costs a new connection and a new penalty
        headers = {"connection": "close"} if status == 401 else None
        return Response(error_body(error), status_code=status, media_type=JSON, headers=headers)

    async def refusal(self, exc: BaseException, rpc: str, tool: str = "") -> Response:
        """:meth:`error_response`, held first for the penalty of a wrong or missing token (a coroutine: it holds
        no thread and no call slot)."""
        delay = refusal_delay(exc)
        if delay:
            await asyncio.sleep(delay)
        return self.error_response(exc, rpc, tool)

    def guard(self, conn: HTTPConnection, method: str) -> str:
        """Authenticate a request (raises :class:`HttpError`); refuses new calls once stopping."""
        how = self.auth.authenticate(conn.headers, conn.cookies, method=method, scheme=self.scheme)
        if self.stopping:
            raise HttpError("the worker is stopping", code=grpc.StatusCode.UNAVAILABLE, error_type="WorkerStopping")
        return how

    def guarded(self, rpc: str, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` behind :meth:`guard`; whatever it raises is answered as JSON (a refused token late)."""

        async def handle(request: Request) -> Response:
            tool = request.path_params.get("name", "")
            try:
                self.guard(request, request.method)
                return await endpoint(request)
            except Exception as exc:
                return await self.refusal(exc, rpc, tool)

        return handle

    @property
    def scheme(self) -> str:
        return "https" if self.auth.tls else "http"

    async def body(self, request: Request, limit: int | None = None) -> bytes:
        """The request body, refused (413) beyond ``limit`` bytes (the front's JSON body limit by default)
        before more than that is read: a ``Content-Length`` over it is refused at once."""
        limit = self.max_body_bytes if limit is None else limit
        try:
            size = int(request.headers.get("content-length") or 0)
        except ValueError:
            size = 0  # h11 has already refused a malformed Content-Length
        body = bytearray()
        if size <= limit:
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    break
        if max(size, len(body)) > limit:
            error = HttpError(
                f"the request body holds more than this route's limit ({limit} bytes; see --max-json-mb)",
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                error_type="BodyTooLarge",
            )
            error.http_status = 413  # type: ignore[attr-defined]
            raise error
        return bytes(body)

    async def args(self, body: bytes | str, where: str) -> str:
        """:func:`parse_args` of a body, on the parser threads when it is large (the event loop keeps serving)."""
        if len(body) <= PARSE_INLINE_BYTES:
            return parse_args(body, where)
        return await asyncio.get_running_loop().run_in_executor(self.parsers, parse_args, body, where)
