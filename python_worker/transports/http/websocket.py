"""``GET /v1/ws``: many calls on one WebSocket, each tagged with the client's id.

The socket's reader takes the client's frames (``call``, ``cancel``) and starts each call as a task; every task
sends its own events through the socket's one writer lock (a frame is never interleaved with another, and a
stream under ``overflow=block`` waits for the client like over SSE). A malformed frame is answered with an
INVALID_ARGUMENT error event and the socket stays open. When the client goes, every call still running is
cancelled (their tools' ``finally`` blocks run).

Streams both ways: every call has an :class:`~python_worker.engine.exchange.Exchange` (its input, when the call
frame says ``"input": true``, and its handler calls). The reader hands it the client's ``input`` frames (JSON, or
binary frames holding one array or bytes item), ``input_end`` and ``handler_reply`` in the order they came; the
exchange's credit and handler calls, raised on the tool's threads, hop to the event loop and go out as
``credit`` / ``handler_call`` events through the same writer lock, never after the call's last event. Frames
for a call that has just ended (input racing with the tool's early return) are dropped; frames for a call this
socket never had are answered with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from ...engine.exchange import Exchange
from ...errors import CallError
from .calls import Gone, build_request, max_rate, overflow, parse_args, run_unary, timeout_ms
from .chunks import result_json, ws_frame
from .duplex import InputGate, SocketPeer, binary_input, handler_reply, input_end, json_items, raw_size
from .errors import HttpError, cancelled, invalid
from .feed import StreamFeed

if TYPE_CHECKING:
    from .front import Front

PARSE_INLINE_BYTES = 64 << 10  # frames up to this size are parsed on the event loop

log = logging.getLogger("krait.worker")

MAX_ID_CHARS = 128
ENDED_KEPT = 1024  # ids of calls ended lately, whose late input / replies are dropped rather than refused
OPS = "'call', 'cancel', 'input', 'input_end' or 'handler_reply'"


@dataclass(slots=True)
class Call:
    """A call in flight on the socket: its task, what cancels it, and its exchange with the client."""

    task: asyncio.Task[None]
    cancel: Callable[..., None]
    exchange: Exchange
    gate: InputGate


class Socket:
    """One client's WebSocket and its calls in flight."""

    def __init__(self, front: Front, ws: WebSocket) -> None:
        self.front = front
        self.ws = ws
        self.calls: dict[str, Call] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._write = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._posted: set[asyncio.Task[None]] = set()  # credit and handler_call events on their way

    async def serve(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self._frame(message["text"])
                elif message.get("bytes") is not None:
                    await self._binary(message["bytes"])
        except WebSocketDisconnect:
            pass
        finally:
            calls = list(self.calls.values())
            for entry in calls:
                entry.cancel()
            for entry in calls:
                with contextlib.suppress(BaseException):
                    await entry.task

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
            if op == "input":
                if len(text) <= PARSE_INLINE_BYTES:
                    items = json_items(frame)
                else:  # each item is encoded again: off the event loop too
                    items = await asyncio.get_running_loop().run_in_executor(self.front.parsers, json_items, frame)
                if items:
                    cost = len(text) if text.isascii() else len(text.encode())
                    self._to_call(call_id, "input", lambda call: call.gate.offer(items, cost))
            elif op == "input_end":
                code, message = input_end(frame)
                self._to_call(call_id, "input_end", lambda call: call.gate.end(code, message))
            elif op == "handler_reply":
                reply = handler_reply(frame)
                self._to_call(call_id, "handler_reply", lambda call: call.exchange.reply(reply))
            elif op == "cancel":
                self._cancel(call_id)
            elif op == "call":
                if call_id in self.calls:
                    raise invalid(f"a call with id {call_id!r} is still in flight on this socket")
                try:
                    self._start(call_id, frame)
                except HttpError:
                    self._end(call_id)  # its client may send input before it reads the refusal
                    raise
            else:
                raise invalid(f"unknown op {str(op)[:40]!r}: expected {OPS}")
        except HttpError as exc:
            await self._error(call_id, exc)

    async def _binary(self, frame: bytes) -> None:
        """A binary frame: one input item (an array or bytes) of a call."""
        if len(frame) <= PARSE_INLINE_BYTES:
            call_id, item, error = binary_input(frame)
        else:  # a large item is copied once into its payload: off the event loop
            call_id, item, error = await self._loop.run_in_executor(self.front.parsers, binary_input, frame)
        try:
            if error is not None:
                raise error
            if call_id is None or not call_id or len(call_id) > MAX_ID_CHARS:
                raise invalid(f"an input frame's header needs an 'id': a string of 1 to {MAX_ID_CHARS} characters")
            assert item is not None
            self._to_call(call_id, "input", lambda call: call.gate.offer([item], raw_size(frame)))
        except Exception as exc:  # a malformed frame; anything else is the front's own failure (logged)
            await self._error(call_id, exc)

    def _to_call(self, call_id: str, op: str, deliver: Callable[[Call], None]) -> None:
        """Hand a frame to its call. Input the call cannot take (beyond its credit, for a tool that reads none)
        ends the call with an INVALID_ARGUMENT error."""
        entry = self.calls.get(call_id)
        if entry is None:
            if call_id not in self._ended:
                raise invalid(f"{op}: no call {call_id!r} in flight on this socket")
            return  # crossed the call's end
        try:
            deliver(entry)
        except CallError as exc:
            entry.cancel(exc)  # the call's task sends the error event

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
        declared = frame.get("input", False)
        if not isinstance(declared, bool):
            raise invalid(f"'input' must be true (the client sends the tool's input) or false, got {declared!r:.40}")
        deadline = timeout_ms(frame.get("timeout_ms"))
        rate = max_rate(frame.get("max_rate_hz"))
        strategy = overflow(frame.get("overflow"))
        args_json = parse_args(orjson.dumps(args), "'args'") if args else ""
        request = build_request(tool, args_json, session, self.front.metadata(self.ws.headers))
        spec = self.front.engine.specs.get(tool)
        peer = SocketPeer(call_id, self._run_on_loop, self._emit)
        exchange = Exchange(peer, input_declared=declared)
        peer.gate = gate = InputGate(exchange, tool, peer.credit)
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
                exchange=exchange,
            )
            coro, cancel = self._stream(call_id, request, feed, exchange, peer), feed.cancel
        else:
            gone = _Gone()
            coro, cancel = self._unary(call_id, request, deadline, gone, exchange, peer), gone.set
        untrack = self.front.track(cancel)
        self._ended.pop(call_id, None)
        task = asyncio.ensure_future(coro)
        self.calls[call_id] = Call(task, cancel, exchange, gate)

        def ended(_task: asyncio.Task[None]) -> None:
            untrack()
            self.calls.pop(call_id, None)
            self._end(call_id)

        task.add_done_callback(ended)

    def _end(self, call_id: str) -> None:
        self._ended[call_id] = None
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def _cancel(self, call_id: str) -> None:
        # a cancel racing with the call's end finds nothing: that is not an error
        entry = self.calls.get(call_id)
        if entry is not None:
            entry.cancel()  # the call ends with a CANCELLED error event, sent by its own task

    async def _unary(
        self,
        call_id: str,
        request: Any,
        deadline: int | None,
        gone: _Gone,
        exchange: Exchange,
        peer: SocketPeer,
    ) -> None:
        front = self.front
        try:
            try:
                response = await run_unary(
                    front.engine,
                    front.executor,
                    request,
                    request.metadata,
                    deadline_ms=deadline,
                    gone=gone.wait(),
                    exchange=exchange,
                )
            finally:
                exchange.close()  # a tool still running (past its deadline) waits for nothing more
        except Gone:
            await self._error(call_id, gone.reason or cancelled(), request.tool_name, peer)
            return
        except Exception as exc:
            await self._error(call_id, exc, request.tool_name, peer)
            return
        finally:
            peer.close()
        body = result_json(response.data, response.content_type, response.metadata)
        await self._send((b'{"id":' + orjson.dumps(call_id) + b',"event":"result",' + body[1:]).decode(), peer)

    async def _stream(self, call_id: str, request: Any, feed: StreamFeed, exchange: Exchange, peer: SocketPeer) -> None:
        try:
            await feed.open()
            while (chunk := await feed.next()) is not None:
                is_final = chunk[3]
                frame = ws_frame(
                    call_id, "final" if is_final else "chunk", chunk, feed.final_extra if is_final else None
                )
                await self._send(frame, peer if is_final else None)
            if feed.error is not None:
                await self._error(call_id, feed.error, request.tool_name, peer)
        except Exception as exc:
            await self._error(call_id, exc, request.tool_name, peer)
        finally:
            peer.close()
            feed.cancel()
            exchange.close()  # a tool waiting for input or a handler's answer wakes up
            await feed.wait_closed()

    async def _error(
        self, call_id: str | None, exc: BaseException, tool: str = "", peer: SocketPeer | None = None
    ) -> None:
        _, error = self.front.error(exc, "WebSocket", tool)
        with contextlib.suppress(Exception):  # the client may have gone
            await self._send(orjson.dumps({"id": call_id, "event": "error", "error": error}).decode(), peer)

    async def _send(self, frame: str | bytes, last_of: SocketPeer | None = None) -> None:
        """Send a frame; ``last_of``: the call whose last event it is (no credit or handler call follows it)."""
        async with self._write:
            if last_of is not None:
                last_of.close()
            if isinstance(frame, str):
                await self.ws.send_text(frame)
            else:
                await self.ws.send_bytes(frame)

    # -- credit and handler calls ---------------------------------------------------------------------------
    def _run_on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the socket's event loop, from any thread (in order with what is already queued)."""
        with contextlib.suppress(RuntimeError):  # the event loop has closed: the socket is gone
            self._loop.call_soon_threadsafe(fn)

    def _emit(self, peer: SocketPeer, frame: str) -> None:
        """Send a credit or handler_call event of ``peer``'s call (on the loop), after the frames queued before."""
        if peer.closed:
            return
        task = asyncio.ensure_future(self._send_posted(peer, frame))
        self._posted.add(task)
        task.add_done_callback(self._posted.discard)

    async def _send_posted(self, peer: SocketPeer, frame: str) -> None:
        with contextlib.suppress(Exception):  # the client may have gone
            async with self._write:
                if not peer.closed:  # the call's last event may have gone meanwhile
                    await self.ws.send_text(frame)


class _Gone(asyncio.Event):
    """What ends a unary call before its answer (its client cancelled or went, bad input, the worker stops), and
    the error it ends with (None: CANCELLED)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: BaseException | None = None

    def set(self, reason: BaseException | None = None) -> None:
        if not self.is_set():
            self.reason = reason
        super().set()
