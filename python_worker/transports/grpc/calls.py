"""What the gRPC front's RPCs share about one tool call: a stream between the engine and its RPC, a unary call's
link between its thread and its RPC, and how an RPC's end, metadata and errors are read. Used by the servicer
(:mod:`.servicer`) and the duplex RPC (:mod:`.duplex`) alike, through :class:`Host`: what of the servicer a call
needs (its engine, its executor), so that neither module imports the other both ways.

Done callbacks are typed ``# type: ignore[arg-type]``: the grpc stubs declare the callback as a class, not a
Protocol, so no function matches it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any, Protocol

import grpc
from grpc import aio

from ...engine import Engine, StreamHandle
from ...engine.aio_bridge import ThreadToLoop
from ...engine.exchange import Exchange
from ...errors import CallError
from ...proto import pb
from ...sdk import ToolContext
from ...wire import encode_batch

Context = aio.ServicerContext[Any, Any]


class Host(Protocol):
    """What a call needs of the servicer that runs it."""

    engine: Engine
    executor: Executor

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]: ...

    def _track(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]: ...


async def open_stream(
    host: Host, request: Any, context: Context, rpc: str, *, batched: bool, exchange: Exchange | None = None
) -> CallStream:
    """Accept a streaming call, send the headers, start its tool; aborts the RPC when the call is refused."""
    # the call's own context (log fields, span): opened in it, its batches pumped in it
    call_context = contextvars.copy_context()
    opening = host._submit(
        call_context.run,
        outcome,
        functools.partial(host.engine.stream, request, call_metadata(context), frame_large=batched, exchange=exchange),
    )
    try:
        handle, error = await asyncio.shield(opening)
    except asyncio.CancelledError:
        # the caller went while the call was being accepted: close what the engine opened (its slot)
        opening.add_done_callback(close_handle)
        raise
    if error is not None:
        await abort(context, host.engine.status(error, rpc, request.tool_name))
    stream = CallStream(host, handle, context, rpc, batched)
    try:
        await context.send_initial_metadata(())
    except BaseException:
        stream.finish()
        raise
    if stream.over:  # the RPC ended while the headers went out: the tool never starts
        raise asyncio.CancelledError
    handle.start()
    host._track(stream.bridge.start(call_context))
    return stream


class CallStream:
    """A streaming call between its engine and its RPC: :meth:`next` gives what to send (None at the end; the
    tool's error aborts the RPC after its last chunk); :meth:`finish`, always, stops a tool whose RPC ended
    first (client cancel or disconnect, deadline: whichever it was is the call's status)."""

    def __init__(self, servicer: Host, handle: StreamHandle, context: Context, rpc: str, batched: bool) -> None:
        self._servicer = servicer
        self._handle = handle
        self._context = context
        self._rpc = rpc
        self.over = False
        self.bridge: ThreadToLoop[Any] = ThreadToLoop(
            functools.partial(_messages, handle, batched), servicer.executor, on_done=handle.close
        )
        # the RPC is over for any reason (also while its handler waits to send: a done callback is certain)
        context.add_done_callback(lambda _ctx: self.finish())  # type: ignore[arg-type]  # stub: a class

    async def next(self) -> Any:
        try:
            item = await self.bridge.next()
        except Exception as exc:  # the tool's error, after its last chunk
            self.over = True
            request_tool = self._handle.ctx.tool_name
            await abort(self._context, self._servicer.engine.status(exc, self._rpc, request_tool))
            raise AssertionError("abort raises") from None
        if item is None:
            self.over = True
        return item

    def finish(self) -> None:
        if not self.over:
            self.over = True
            self._handle.cancel(ended_by(self._context))
            self.bridge.close()
            if not self.bridge.started:
                self._handle.close()


class UnaryCall:
    """A unary call's link between its engine thread and its RPC: :meth:`ready` (on the thread, once the engine
    has accepted the call) hooks up cancellation, or refuses to start a tool whose caller has already gone;
    :meth:`ended` (on the loop, when the RPC is over for any reason) raises the tool's cancel flag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ctx: ToolContext | None = None
        self._gone: str | None = None

    def ready(self, ctx: ToolContext) -> None:
        with self._lock:
            self._ctx, gone = ctx, self._gone
        if gone is not None:
            ctx.cancel_event.set(gone)
            raise CallError(f"{ctx.tool_name} was not started: its caller went", code=_code(gone))

    def ended(self, reason: str) -> None:
        with self._lock:
            if self._gone is None:
                self._gone = reason
            ctx = self._ctx
        if ctx is not None:
            ctx.cancel_event.set(reason)


def _code(reason: str) -> grpc.StatusCode:
    return grpc.StatusCode.DEADLINE_EXCEEDED if reason == "DEADLINE_EXCEEDED" else grpc.StatusCode.CANCELLED


def _messages(handle: StreamHandle, batched: bool) -> Iterator[Any]:
    """What a stream sends, built on the pump's thread: per batch of ready chunks, one serialized batch message
    (``batched``), or the list of its ``ToolChunk`` messages."""
    batches = handle.batches(batched=True)
    try:
        for batch in batches:
            if batched:
                yield encode_batch(batch)
            else:
                yield [
                    pb.ToolChunk(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)
                    for seq, data, content_type, is_final, meta in batch
                ]
    finally:
        getattr(batches, "close", lambda: None)()  # a generator abandoned here ends its call as cancelled


def close_handle(opening: asyncio.Future[tuple[StreamHandle | None, Exception | None]]) -> None:
    handle = None if opening.cancelled() or opening.exception() is not None else opening.result()[0]
    if handle is not None:
        handle.cancel()
        handle.close()


def outcome(run: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """``run()``'s value or its exception, returned: raised through the executor, the exception's traceback
    would carry concurrent.futures' frames above the tool's (the caller is shown the tool's code)."""
    try:
        return run(), None
    except Exception as exc:
        return None, exc


def swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: the RPC is over, nobody reads it


async def abort(context: Context, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


# A client whose deadline passes cancels the call itself (RST_STREAM), a little before the worker's own deadline
# (which counts from when the headers arrived): a cancel this close to the deadline is the deadline's.
DEADLINE_SLACK_S = 0.1


def ended_by(context: Context) -> str:
    """Why an RPC that ended before its tool did was cut short: its deadline, or its client."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"


def call_metadata(context: Context) -> dict[str, str]:
    # the token stays here: nothing after the front needs it
    return {
        key: value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str) and key != "authorization"
    }
