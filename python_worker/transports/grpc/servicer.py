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
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from grpc import aio

from ...engine import Engine
from ...engine.exchange import Exchange
from ...engine.requests import Malformed, deserializer
from ...errors import CallError, InvalidArguments
from ...proto import pb, pb_grpc
from .calls import (
    CallStream,
    Context,
    UnaryCall,
    abort,
    call_metadata,
    ended_by,
    open_stream,
    outcome,
    swallow,
)

log = logging.getLogger("krait.worker")


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
            await abort(context, self.engine.status(exc, rpc))

    async def refuse_malformed(self, rpc: str, request: Malformed, context: Context) -> None:
        await abort(context, self.engine.status(InvalidArguments(request.reason), rpc))

    # -- tool calls ---------------------------------------------------------------------------------------
    async def ExecuteTool(self, request: Any, context: Context) -> Any:
        if isinstance(request, Malformed):
            await self.refuse_malformed("ExecuteTool", request, context)
        # headers first, from the loop, before the call goes to its thread: sent before the tool runs, as
        # clients need (one that saw none knows the call never started), without a thread waiting on the loop
        # for them (that round trip cost ~150 us a call); a refusal after them is still a status, as before
        await context.send_initial_metadata(())
        call = UnaryCall()
        context.add_done_callback(lambda _ctx: call.ended(ended_by(context)))  # type: ignore[arg-type]
        run = functools.partial(self.engine.execute, request, call_metadata(context), on_ready=call.ready)
        # in a context of its own: the call's log fields and span stay with the call, not with the thread
        work = self._submit(contextvars.copy_context().run, outcome, run)
        try:
            # shielded: the RPC's cancellation must not orphan the thread's result (the done callback has
            # already told the tool to stop)
            response, error = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(swallow)
            raise
        if error is not None:
            await abort(context, self.engine.status(error, "ExecuteTool", request.tool_name))
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
    ) -> CallStream:
        """Accept a streaming call (with its ``exchange`` with the caller, for ExecuteToolDuplex), send the headers,
        start its tool; aborts the RPC when the call is refused."""
        if isinstance(request, Malformed):
            await self.refuse_malformed(rpc, request, context)
        return await open_stream(self, request, context, rpc, batched=batched, exchange=exchange)


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
