"""ExecuteToolDuplex: one tool call whose caller and tool talk both ways over one bidirectional gRPC stream.

The caller's first message is the call (``start``); after it, the caller sends the tool's input items (within
the credit the worker grants), the end of its input and its answers to the tool's handler calls. The worker
sends credit and handler calls whenever the call's :class:`~python_worker.engine.exchange.Exchange` asks (from
any thread: the tool's, the engine's loop), interleaved with the tool's output: a streaming tool's chunk
batches, or a unary tool's one result. Everything the worker sends goes through one outbox, drained by the
RPC's handler in order; the tool's batches enter it one at a time (the next once the last was written), so a
slow caller still backpressures the tool as on ExecuteStreamingToolBatched.

A task of the RPC reads the caller's later messages and feeds the exchange. The rest is the other tool RPCs'
(:mod:`.servicer`): headers before the tool runs, the RPC's end (cancel, disconnect, deadline) stops the tool and
frees its slot, errors as statuses with ToolError details.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from grpc import aio

from ...engine.exchange import Exchange
from ...engine.requests import Malformed
from ...errors import CallError, InvalidArguments
from ...proto import pb
from ...wire import varint
from .calls import CallStream, Context, Host, UnaryCall, abort, call_metadata, ended_by, open_stream, outcome, swallow

RPC = "ExecuteToolDuplex"
# request headers a caller may send (see worker.proto)
INPUT_HEADER = "krait-input"
RPC_HEADER = "krait-rpc"

# DuplexResponse field 1 (chunks), length-delimited: a batch already encoded is framed by hand, not re-encoded
_CHUNKS_TAG = b"\x0a"


class _End:
    """The call is over: with ``error``, the status that ends it (None: it ended well)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def serialize(message: Any) -> bytes:
    """The response serializer: chunk batches go out as the bytes framed here, the rest as protobuf."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class DuplexCall:
    """One ExecuteToolDuplex RPC; also the :class:`~python_worker.engine.exchange.Peer` its exchange reaches the
    caller through (:meth:`grant`, :meth:`handler_call`: thread-safe)."""

    def __init__(self, servicer: Host, context: Context) -> None:
        self._servicer = servicer
        self._engine = servicer.engine
        self._context = context
        self._loop = asyncio.get_running_loop()
        # what goes out, in order: DuplexResponse messages, framed chunk batches (bytes), then an _End
        self._outbox: collections.deque[Any] = collections.deque()
        self._wake = asyncio.Event()
        self._taken = asyncio.Event()  # the last batch of output was written: the next may come
        self._tool = ""
        self._reader: asyncio.Task[None] | None = None

    # -- the Peer (any thread) ----------------------------------------------------------------------------------
    def grant(self, items: int, nbytes: int) -> None:
        self._post(pb.DuplexResponse(credit=pb.InputCredit(items=items, bytes=nbytes)))

    def handler_call(self, call: Any) -> None:
        self._post(pb.DuplexResponse(handler_call=call))

    def _post(self, message: Any) -> None:
        # RuntimeError: the loop has closed (the worker is stopping): nobody is left to tell
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._put, message)

    def _put(self, message: Any) -> None:
        # on the loop
        self._outbox.append(message)
        self._wake.set()

    # -- the RPC ------------------------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[Any]:
        """The RPC's responses, until the call ends (its error aborts the RPC)."""
        request = await self._start()
        self._tool = request.tool_name
        headers = dict(self._context.invocation_metadata() or ())
        # krait-input: "1": the caller says it streams input (a tool that reads none is refused, as on the link);
        # without it the caller may send input, or none
        exchange = Exchange(self, input_declared=True if headers.get(INPUT_HEADER) == "1" else None)
        # the RPC is over for any reason: wake whatever waits on the caller (input, a handler's answer)
        self._context.add_done_callback(lambda _ctx: exchange.close())  # type: ignore[arg-type]  # stub: a class
        self._reader = asyncio.create_task(self._read(exchange))
        spec = self._engine.specs.get(request.tool_name)
        # krait-rpc names the kind of call the caller expects (its ExecuteTool or ExecuteStreamingTool*): the
        # engine refuses the other kind of tool (WrongRpc), as those RPCs do; without it the tool decides
        expected = headers.get(RPC_HEADER)
        streaming = spec is not None and spec.supports_streaming if expected is None else expected != "ExecuteTool"
        try:
            # a unary tool, or an unknown one (the engine refuses it), runs as a unary call
            messages = self._stream(request, exchange) if streaming else self._unary(request, exchange)
            async for message in messages:
                yield message
        finally:
            self._reader.cancel()
            exchange.close()

    async def _start(self) -> Any:
        """The call's ExecuteToolRequest: the first message, which must be ``start``."""
        message = await self._context.read()
        if message is aio.EOF:
            problem = "got none (the request side closed first)"
        elif isinstance(message, Malformed):
            problem = f"got a malformed one: {message.reason}"
        elif (kind := message.WhichOneof("kind")) != "start":
            problem = f"got {kind!r}" if kind else "got a DuplexRequest with no kind set"
        else:
            return message.start
        await self._refuse(InvalidArguments(f"{RPC}: the first message must be 'start' (the call); {problem}"))

    async def _unary(self, request: Any, exchange: Exchange) -> AsyncIterator[Any]:
        # headers first, from the loop, before the call goes to its thread (as ExecuteTool)
        await self._context.send_initial_metadata(())
        call = UnaryCall()
        context = self._context
        context.add_done_callback(lambda _ctx: call.ended(ended_by(context)))  # type: ignore[arg-type]
        run = functools.partial(
            self._engine.execute, request, call_metadata(context), on_ready=call.ready, exchange=exchange
        )
        work = self._servicer._submit(contextvars.copy_context().run, outcome, run)
        work.add_done_callback(self._unary_done)
        try:
            async for message in self._messages():
                yield message
        finally:
            if not work.done():
                work.add_done_callback(swallow)  # the RPC is over: the tool was told to stop

    def _unary_done(self, work: asyncio.Future[Any]) -> None:
        # on the loop
        if work.cancelled():  # the executor shut down: the worker is stopping
            self._put(_End(CallError(f"{self._tool} was not run: the worker is stopping")))
            return
        if (failure := work.exception()) is not None:
            self._put(_End(failure))
            return
        response, error = work.result()
        if error is None:
            self._put(pb.DuplexResponse(result=response))
        self._put(_End(error))

    async def _stream(self, request: Any, exchange: Exchange) -> AsyncIterator[Any]:
        # accepted, headers sent and started as ExecuteStreamingToolBatched does
        stream = await open_stream(self._servicer, request, self._context, RPC, batched=True, exchange=exchange)
        forward = asyncio.create_task(self._forward(stream))
        try:
            async for message in self._messages():
                yield message
        finally:
            forward.cancel()
            stream.finish()  # a no-op once the stream has ended; else stops the tool

    async def _forward(self, stream: CallStream) -> None:
        """The tool's batches into the outbox, one at a time (the next once the last one was written)."""
        try:
            while (batch := await stream.bridge.next()) is not None:
                self._taken.clear()
                self._put(b"".join((_CHUNKS_TAG, varint(len(batch)), batch)))
                await self._taken.wait()
        except Exception as exc:  # the tool's error, after its last chunk
            stream.over = True
            self._put(_End(exc))
        else:
            stream.over = True
            self._put(_End(None))

    async def _messages(self) -> AsyncIterator[Any]:
        """The outbox, in order, until the call's end; raises (aborts the RPC) when that end is an error."""
        outbox = self._outbox
        while True:
            while outbox:
                message = outbox.popleft()
                if isinstance(message, _End):
                    if message.error is not None:
                        await self._refuse(message.error)
                    return
                yield message
                if isinstance(message, bytes):
                    self._taken.set()
            self._wake.clear()
            await self._wake.wait()

    async def _read(self, exchange: Exchange) -> None:
        """The caller's messages after ``start``, into the exchange; the request side closing ends the input
        (when no ``input_end`` came first). A message that breaks the protocol ends the call."""
        ended = False
        while True:
            try:
                message = await self._context.read()
            except asyncio.CancelledError:
                raise
            except Exception:  # the RPC is over: its end has stopped the call already
                return
            if message is aio.EOF:
                if not ended:
                    exchange.end_input()
                return
            if isinstance(message, Malformed):
                self._put(_End(InvalidArguments(f"{self._tool}: {message.reason}")))
                return
            kind = message.WhichOneof("kind")
            if kind == "input":
                try:
                    exchange.feed(message.input.items)
                except InvalidArguments as exc:  # beyond the credit, or for a tool that reads none
                    self._put(_End(exc))
                    return
            elif kind == "input_end":
                ended = True
                exchange.end_input(message.input_end.code, message.input_end.message)
            elif kind == "handler_reply":
                exchange.reply(message.handler_reply)
            else:
                what = "a second 'start'" if kind else "a DuplexRequest with no kind set"
                self._put(_End(InvalidArguments(f"{self._tool}: {RPC} got {what}; 'start' comes once, first")))
                return

    async def _refuse(self, error: BaseException) -> NoReturn:
        """End the RPC with the status that reports ``error``."""
        await abort(self._context, self._engine.status(error, RPC, self._tool))
        raise AssertionError("abort raises")
