"""ToolWorkerServicer: the ``krait.v1.ToolWorker`` gRPC service over the engine, as ``grpc.aio`` coroutines.

Every RPC is a coroutine on the front's event loop until its tool runs: a call still waiting for its request
message, or refused, holds no thread and no call slot. Tool code runs where it always has (the engine: a sync
tool on a thread, an async tool on the engine's loop): a unary call's engine work on the front's bounded
executor, a stream's batches read from :meth:`StreamHandle.batches` by a pump thread of that executor and
handed to the RPC through :class:`~python_worker.engine.aio_bridge.ThreadToLoop` (with backpressure).

ExecuteToolDuplex (streams both ways: the caller's input and handler replies in, credit, handler calls and the
tool's output out) lives in :mod:`.duplex`, on the same helpers.

Headers (initial metadata) always go out before a tool runs: a client that saw none knows the call never
started and may retry it elsewhere. A stream sends them once the engine has accepted the call; a unary call
sends them from the loop before handing the call to its thread (a refusal then comes after them, as a status):
waiting on its thread for the loop to send them cost a round trip between the two, ~150 us a call.

Done callbacks are typed ``# type: ignore[arg-type]``: the grpc stubs declare the callback as a class, not a
Protocol, so no function matches it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import grpc
from grpc import aio

from ...engine import Engine, StreamHandle
from ...engine.aio_bridge import ThreadToLoop
from ...engine.exchange import Exchange
from ...engine.requests import Malformed, deserializer
from ...errors import CallError, InvalidArguments
from ...proto import pb, pb_grpc
from ...sdk import ToolContext
from ...wire import encode_batch

log = logging.getLogger("krait.worker")

Context = aio.ServicerContext[Any, Any]


class ToolWorkerServicer(pb_grpc.ToolWorkerServicer):
    """The gRPC front of an :class:`~python_worker.engine.Engine`: each RPC hands its request to the engine,
    hooks the RPC's end (cancel, disconnect, deadline) to the call, and turns what ends the call into the RPC's
    status. ``executor`` runs the engine's blocking work (bounded: the engine's call slots and a few more)."""

    def __init__(self, engine: Engine, executor: Executor) -> None:
        self.engine = engine
        self.executor = executor
        # the executor's work not yet done (the server waits for it when stopping, before its loop closes)
        self.pending: set[asyncio.Future[Any]] = set()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return self._track(asyncio.get_running_loop().run_in_executor(self.executor, fn, *args))

    def _track(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future

    # -- small RPCs ---------------------------------------------------------------------------------------
    async def Ping(self, request: Any, context: Context) -> Any:
        return self.engine.ping(request)

    async def ListTools(self, request: Any, context: Context) -> Any:
        return self.engine.list_tools(request)

    async def Metrics(self, request: Any, context: Context) -> Any:
        return await self._submit(self.engine.metrics_text, request)

    async def InitializeSession(self, request: Any, context: Context) -> Any:
        return await self._session_call("InitializeSession", self.engine.initialize_session, request, context)

    async def CleanupSession(self, request: Any, context: Context) -> Any:
        return await self._session_call("CleanupSession", self.engine.cleanup_session, request, context)

    async def _session_call(self, rpc: str, call: Callable[[Any], Any], request: Any, context: Context) -> Any:
        # on the executor: a session's end runs the adapter's on_session_end, which may block
        try:
            return await self._submit(call, request)
        except CallError as exc:
            await _abort(context, self.engine.status(exc, rpc))

    async def refuse_malformed(self, rpc: str, request: Malformed, context: Context) -> None:
        await _abort(context, self.engine.status(InvalidArguments(request.reason), rpc))

    # -- tool calls ---------------------------------------------------------------------------------------
    async def ExecuteTool(self, request: Any, context: Context) -> Any:
        if isinstance(request, Malformed):
            await self.refuse_malformed("ExecuteTool", request, context)
        # headers first, from the loop, before the call goes to its thread: sent before the tool runs, as
        # clients need (one that saw none knows the call never started), without a thread waiting on the loop
        # for them (that round trip cost ~150 us a call); a refusal after them is still a status, as before
        await context.send_initial_metadata(())
        call = _UnaryCall()
        context.add_done_callback(lambda _ctx: call.ended(_ended_by(context)))  # type: ignore[arg-type]
        run = functools.partial(self.engine.execute, request, _metadata(context), on_ready=call.ready)
        # in a context of its own: the call's log fields and span stay with the call, not with the thread
        work = self._submit(contextvars.copy_context().run, _outcome, run)
        try:
            # shielded: the RPC's cancellation must not orphan the thread's result (the done callback has
            # already told the tool to stop)
            response, error = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(_swallow)
            raise
        if error is not None:
            await _abort(context, self.engine.status(error, "ExecuteTool", request.tool_name))
        return response

    async def ExecuteStreamingTool(self, request: Any, context: Context) -> AsyncIterator[Any]:
        stream = await self._open(request, context, "ExecuteStreamingTool", batched=False)
        try:
            while (messages := await stream.next()) is not None:
                for message in messages:
                    yield message
        finally:
            stream.finish()

    async def ExecuteStreamingToolBatched(self, request: Any, context: Context) -> AsyncIterator[bytes]:
        # already serialized (on the pump's thread): registered with a pass-through serializer (see register())
        stream = await self._open(request, context, "ExecuteStreamingToolBatched", batched=True)
        try:
            while (message := await stream.next()) is not None:
                yield message
        finally:
            stream.finish()

    async def ExecuteToolDuplex(self, requests: Any, context: Context) -> AsyncIterator[Any]:
        # streams both ways (duplex.py); reads its messages with context.read(), not ``requests``
        from .duplex import DuplexCall  # duplex.py builds on this module's call helpers

        async for message in DuplexCall(self, context).run():
            yield message

    async def _open(
        self, request: Any, context: Context, rpc: str, *, batched: bool, exchange: Exchange | None = None
    ) -> _Stream:
        """Accept a streaming call (with its ``exchange`` with the caller, for ExecuteToolDuplex), send the headers,
        start its tool; aborts the RPC when the call is refused."""
        if isinstance(request, Malformed):
            await self.refuse_malformed(rpc, request, context)
        # the call's own context (log fields, span): opened in it, its batches pumped in it
        call_context = contextvars.copy_context()
        opening = self._submit(
            call_context.run,
            _outcome,
            functools.partial(self.engine.stream, request, _metadata(context), frame_large=batched, exchange=exchange),
        )
        try:
            handle, error = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # the caller went while the call was being accepted: close what the engine opened (its slot)
            opening.add_done_callback(_close_handle)
            raise
        if error is not None:
            await _abort(context, self.engine.status(error, rpc, request.tool_name))
        stream = _Stream(self, handle, context, rpc, batched)
        try:
            await context.send_initial_metadata(())
        except BaseException:
            stream.finish()
            raise
        if stream.over:  # the RPC ended while the headers went out: the tool never starts
            raise asyncio.CancelledError
        handle.start()
        self._track(stream.bridge.start(call_context))
        return stream


class _Stream:
    """A streaming call between its engine and its RPC: :meth:`next` gives what to send (None at the end; the
    tool's error aborts the RPC after its last chunk); :meth:`finish`, always, stops a tool whose RPC ended
    first (client cancel or disconnect, deadline: whichever it was is the call's status)."""

    def __init__(
        self, servicer: ToolWorkerServicer, handle: StreamHandle, context: Context, rpc: str, batched: bool
    ) -> None:
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
            await _abort(self._context, self._servicer.engine.status(exc, self._rpc, request_tool))
            raise AssertionError("abort raises") from None
        if item is None:
            self.over = True
        return item

    def finish(self) -> None:
        if not self.over:
            self.over = True
            self._handle.cancel(_ended_by(self._context))
            self.bridge.close()
            if not self.bridge.started:
                self._handle.close()


class _UnaryCall:
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


def _close_handle(opening: asyncio.Future[tuple[StreamHandle | None, Exception | None]]) -> None:
    handle = None if opening.cancelled() or opening.exception() is not None else opening.result()[0]
    if handle is not None:
        handle.cancel()
        handle.close()


def _outcome(run: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """``run()``'s value or its exception, returned: raised through the executor, the exception's traceback
    would carry concurrent.futures' frames above the tool's (the caller is shown the tool's code)."""
    try:
        return run(), None
    except Exception as exc:
        return None, exc


def _swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: the RPC is over, nobody reads it


async def _abort(context: Context, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


# A client whose deadline passes cancels the call itself (RST_STREAM), a little before the worker's own deadline
# (which counts from when the headers arrived): a cancel this close to the deadline is the deadline's.
DEADLINE_SLACK_S = 0.1


def _ended_by(context: Context) -> str:
    """Why an RPC that ended before its tool did was cut short: its deadline, or its client."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"


def _metadata(context: Context) -> dict[str, str]:
    # the token stays here: nothing after the front needs it
    return {
        key: value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str) and key != "authorization"
    }


def _serializer(method: str, response_type: Any) -> Callable[[Any], bytes] | None:
    """How ``method``'s responses are serialized: the batched stream's handler yields the bytes it already
    encoded (the hot path), the duplex one those bytes framed as DuplexResponse.chunks beside protobuf messages."""
    if method == "ExecuteStreamingToolBatched":
        return None
    if method == "ExecuteToolDuplex":
        from .duplex import serialize

        return serialize
    return response_type.SerializeToString  # type: ignore[no-any-return]


def register(servicer: ToolWorkerServicer, server: aio.Server) -> None:
    """Add the service to ``server``, like the generated ``add_ToolWorkerServicer_to_server`` but with the
    batched stream's messages passed through as the bytes its handler already encoded (see :func:`_serializer`)."""
    service = pb.DESCRIPTOR.services_by_name["ToolWorker"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = _handler_maker(method.client_streaming, method.server_streaming)(
            _refusing_malformed(servicer, method.name, getattr(servicer, method.name)),
            request_deserializer=deserializer(request_type),
            response_serializer=_serializer(method.name, response_type),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _handler_maker(client_streaming: bool, server_streaming: bool) -> Callable[..., grpc.RpcMethodHandler[Any, Any]]:
    if client_streaming:
        return grpc.stream_stream_rpc_method_handler if server_streaming else grpc.stream_unary_rpc_method_handler
    return grpc.unary_stream_rpc_method_handler if server_streaming else grpc.unary_unary_rpc_method_handler


def _refusing_malformed(servicer: ToolWorkerServicer, rpc: str, behavior: Callable[[Any, Any], Any]) -> Any:
    # the deserializer hands over a Malformed instead of raising (see requests.py); the tool RPCs check it
    # themselves (no extra layer per streamed message)
    if rpc.startswith("Execute"):
        return behavior

    async def unary(request: Any, context: Context) -> Any:
        if isinstance(request, Malformed):
            await servicer.refuse_malformed(rpc, request, context)
        return await behavior(request, context)

    return unary
