"""``GET /v1/ws``: many calls on one WebSocket, each tagged with the client's id.

The socket's reader takes the client's frames (``call``, ``cancel``) and starts each call as a task; every task
sends its own events through the socket's one writer lock (a frame is never interleaved with another, and a
stream under ``overflow=block`` waits for the client like over SSE). A malformed frame is answered with an
INVALID_ARGUMENT error event and the socket stays open. When the client goes, every call still running is
cancelled (their tools' ``finally`` blocks run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from .calls import Gone, build_request, max_rate, overflow, parse_args, run_unary, timeout_ms
from .chunks import result_json, ws_frame
from .errors import HttpError, cancelled, invalid
from .feed import StreamFeed

if TYPE_CHECKING:
    from .front import Front

PARSE_INLINE_BYTES = 64 << 10  # frames up to this size are parsed on the event loop

log = logging.getLogger("krait.worker")

MAX_ID_CHARS = 128


class Socket:
    """One client's WebSocket and its calls in flight."""

    def __init__(self, front: Front, ws: WebSocket) -> None:
        self.front = front
        self.ws = ws
        # call id -> (its task, what cancels it)
        self.calls: dict[str, tuple[asyncio.Task[None], Callable[..., None]]] = {}
        self._write = asyncio.Lock()

    async def serve(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self._frame(message["text"])
                else:
                    await self._error(None, invalid("binary frames are not accepted: send calls as JSON text frames"))
        except WebSocketDisconnect:
            pass
        finally:
            calls = list(self.calls.values())
            for _, cancel in calls:
                cancel()
            for task, _ in calls:
                with contextlib.suppress(BaseException):
                    await task

    async def _frame(self, text: str) -> None:
        try:
            if len(text) <= PARSE_INLINE_BYTES:
                frame = orjson.loads(text)
            else:  # a large frame is parsed off the event loop, like a large body
                frame = await asyncio.get_running_loop().run_in_executor(self.front.parsers, orjson.loads, text)
        except orjson.JSONDecodeError as exc:
            await self._error(None, invalid(f"the frame is not valid JSON: {exc}"))
            return
        call_id = frame.get("id") if isinstance(frame, dict) else None
        if not isinstance(call_id, str):
            call_id = None
        try:
            if not isinstance(frame, dict):
                raise invalid(f"a frame must be a JSON object, got {type(frame).__name__}")
            op = frame.get("op")
            if call_id is None or not call_id or len(call_id) > MAX_ID_CHARS:
                raise invalid(f"a frame needs an 'id': a string of 1 to {MAX_ID_CHARS} characters")
            if op == "cancel":
                self._cancel(call_id)
                return
            if op != "call":
                raise invalid(f"unknown op {str(op)[:40]!r}: expected 'call' or 'cancel'")
            if call_id in self.calls:
                raise invalid(f"a call with id {call_id!r} is still in flight on this socket")
            self._start(call_id, frame)
        except HttpError as exc:
            await self._error(call_id, exc)

    def _start(self, call_id: str, frame: dict[str, Any]) -> None:
        tool = frame.get("tool")
        if not isinstance(tool, str) or not tool:
            raise invalid("a call needs 'tool': the tool's name")
        args = frame.get("args", {})
        if not isinstance(args, dict):
            raise invalid(f"'args' must be a JSON object of arguments, got {type(args).__name__}")
        session = frame.get("session")
        if session is not None and not isinstance(session, str):
            raise invalid("'session' must be a string")
        deadline = timeout_ms(frame.get("timeout_ms"))
        rate = max_rate(frame.get("max_rate_hz"))
        strategy = overflow(frame.get("overflow"))
        args_json = parse_args(orjson.dumps(args), "'args'") if args else ""
        request = build_request(tool, args_json, session, self.front.metadata(self.ws.headers))
        spec = self.front.engine.specs.get(tool)
        cancel: Callable[..., None]
        if spec is not None and spec.supports_streaming:
            feed = StreamFeed(
                self.front.engine,
                request,
                request.metadata,
                executor=self.front.executor,
                overflow=strategy,
                max_rate_hz=rate,
                timeout_ms=deadline,
            )
            coro, cancel = self._stream(call_id, request, feed), feed.cancel
        else:
            gone = asyncio.Event()
            coro, cancel = self._unary(call_id, request, deadline, gone), lambda _reason=None: gone.set()
        untrack = self.front.track(cancel)
        task = asyncio.ensure_future(coro)
        self.calls[call_id] = (task, cancel)

        def ended(_task: asyncio.Task[None]) -> None:
            untrack()
            self.calls.pop(call_id, None)

        task.add_done_callback(ended)

    def _cancel(self, call_id: str) -> None:
        # a cancel racing with the call's end finds nothing: that is not an error
        entry = self.calls.get(call_id)
        if entry is not None:
            entry[1]()  # the call ends with a CANCELLED error event, sent by its own task

    async def _unary(self, call_id: str, request: Any, deadline: int | None, gone: asyncio.Event) -> None:
        front = self.front
        try:
            response = await run_unary(
                front.engine, front.executor, request, request.metadata, deadline_ms=deadline, gone=gone.wait()
            )
        except Gone:
            await self._error(call_id, cancelled(), request.tool_name)
            return
        except Exception as exc:
            await self._error(call_id, exc, request.tool_name)
            return
        body = result_json(response.data, response.content_type, response.metadata)
        await self._send((b'{"id":' + orjson.dumps(call_id) + b',"event":"result",' + body[1:]).decode())

    async def _stream(self, call_id: str, request: Any, feed: StreamFeed) -> None:
        try:
            await feed.open()
            while (chunk := await feed.next()) is not None:
                is_final = chunk[3]
                frame = ws_frame(
                    call_id, "final" if is_final else "chunk", chunk, feed.final_extra if is_final else None
                )
                await self._send(frame)
            if feed.error is not None:
                await self._error(call_id, feed.error, request.tool_name)
        except Exception as exc:
            await self._error(call_id, exc, request.tool_name)
        finally:
            feed.cancel()
            await feed.wait_closed()

    async def _error(self, call_id: str | None, exc: BaseException, tool: str = "") -> None:
        _, error = self.front.error(exc, "WebSocket", tool)
        with contextlib.suppress(Exception):  # the client may have gone
            await self._send(orjson.dumps({"id": call_id, "event": "error", "error": error}).decode())

    async def _send(self, frame: str | bytes) -> None:
        async with self._write:
            if isinstance(frame, str):
                await self.ws.send_text(frame)
            else:
                await self.ws.send_bytes(frame)
