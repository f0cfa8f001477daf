"""An asyncio client for Krait workers, on ``grpc.aio``: the async twin of :class:`python_worker.client.Client`.

    async with AsyncClient("127.0.0.1:50051", timeout=60) as client:
        print(await client.execute("add", a=1, b=2))
        async for chunk in client.execute_stream("stream_progress", steps=3):
            print(chunk.data, chunk.is_final)

Chunks, errors and arguments are those of the sync client (:class:`~python_worker.client.Chunk`,
:class:`~python_worker.client.KraitError` and its subclasses; arrays and bytes travel as binary arguments).
Leaving a stream early (``break``, an exception, ``aclose()``, the end of its ``async with``) cancels the call
on the worker. Create the client inside a running event loop, as ``grpc.aio`` channels belong to one.
Also importable as ``python_worker.client.AsyncClient``.

``call``/``stream`` take ``input=`` (an iterable or async iterable: the tool's input stream, pulled as the worker
grants credit; a plain iterable is read on the event loop, so it must not block) and ``handlers=``
(``{"name": callable}``, plain or ``async``; an async handler still running at the tool's timeout is cancelled),
as the sync client's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio

from . import codec
from .client_common import (
    Chunk,
    Connection,
    KraitError,
    check_input,
    coalesce,
    handler_args,
    handler_failure,
    handler_found,
    handler_raised,
    handler_value,
    input_end,
    input_item,
    translate,
    wrong_duplex_shape,
)
from .proto import pb
from .wire import Decoded

AsyncHandler = Callable[[Any], Any | Awaitable[Any]]
AsyncInput = Iterable[Any] | AsyncIterable[Any]


# How much longer than the worker's timeout for a handler call an async handler may run before it is cancelled.
HANDLER_TIMEOUT_MARGIN_S = 1.0


_STOP = object()  # ends an _AsyncDuplex's writer


class _AsyncDuplex:
    """One ExecuteToolDuplex call of :class:`AsyncClient`: a writer task sends the queued requests in order (the
    start, input batches, the input's end, handler replies), an input task pulls the caller's (async) iterable
    only within the credit the worker grants, each handler call runs in a task of its own; :meth:`read` (the
    caller's task) handles credit and handler calls and returns chunk batches and the result. The request side
    stays open until the call ends (a handler may be called after the input has ended)."""

    def __init__(
        self,
        method: Any,
        request: Any,
        input: AsyncInput | None,
        handlers: Mapping[str, AsyncHandler] | None,
        options: Mapping[str, Any],
    ) -> None:
        check_input(input)
        if input is not None and not isinstance(input, (Iterable, AsyncIterable)):
            raise TypeError(f"input= takes an iterable or an async iterable, not a {type(input).__name__}")
        self._handlers = dict(handlers or {})
        self._call = method(**options)
        self._outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self._credit = [0, 0]
        self._credited = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.input_error: BaseException | None = None  # the caller's input raised: the call raises it
        self._over = False
        self._outgoing.put_nowait(pb.DuplexRequest(start=request))
        if input is None:
            self._outgoing.put_nowait(input_end())
        else:
            self._spawn(self._pump(input))
        # the writer is never cancelled: grpc.aio cancels the whole RPC when a task awaiting ``write`` is, and a
        # result already read would be followed by CancelledError instead of the call's status; finish() stops it
        self._writer = asyncio.ensure_future(self._write())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self) -> None:
        outgoing, pending = self._outgoing, None
        try:
            while True:
                message = pending if pending is not None else await outgoing.get()
                pending = None
                if self._over:  # nothing crosses the call's end: gRPC would end it INTERNAL
                    return
                if isinstance(message, pb.InputItem):
                    message, pending = coalesce(message, self._ready)
                await self._call.write(message)
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            return  # the call is over: its status is read by read()

    def _ready(self) -> Any:
        try:
            return self._outgoing.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _pump(self, source: AsyncInput) -> None:
        """The caller's items, as far as the credit goes, then the input's end."""
        iterator: Any = None
        try:
            iterator = aiter(source) if isinstance(source, AsyncIterable) else iter(source)
            while await self._wait_credit():
                try:
                    value = await anext(iterator) if isinstance(iterator, AsyncIterator) else next(iterator)
                except (StopIteration, StopAsyncIteration):
                    self._outgoing.put_nowait(input_end())
                    return
                item = input_item(value)
                self._credit[0] -= 1
                self._credit[1] -= len(item.data)
                self._outgoing.put_nowait(item)
        except Exception as exc:
            self.input_error = exc
            self._outgoing.put_nowait(input_end(exc))
        finally:
            if isinstance(iterator, AsyncIterator):
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()  # an async generator left early runs its finally here
            elif (close := getattr(iterator, "close", None)) is not None:
                with contextlib.suppress(Exception):
                    close()

    async def _wait_credit(self) -> bool:
        while not self._over and (self._credit[0] <= 0 or self._credit[1] <= 0):
            self._credited.clear()
            await self._credited.wait()
        return not self._over

    async def _run_handler(self, call: Any) -> None:
        handler, reply = handler_found(self._handlers, call)
        if handler is not None:
            try:
                value = handler(handler_args(call))
                if inspect.isawaitable(value):
                    # the worker's own timeout answers the tool; this one, a little later, only stops a handler
                    # the call has left behind (a reply crossing the call's end is what gRPC reports as INTERNAL)
                    timeout = call.timeout_ms / 1000 + HANDLER_TIMEOUT_MARGIN_S if call.timeout_ms else None
                    value = await asyncio.wait_for(value, timeout)
                reply = handler_value(call, value)
            except TimeoutError:
                reply = handler_failure(call, "HandlerTimeout", f"no answer within {call.timeout_ms} ms")
            except Exception as exc:
                reply = handler_raised(call, exc)
        if not self._over:
            self._outgoing.put_nowait(reply)

    async def read(self) -> Any:
        """The next chunk batch (a list of decoded tuples) or result (an ExecuteToolResponse); ``grpc.aio.EOF``
        at the end. Raises ``grpc.RpcError`` for the call's status, or, once the caller's input failed, that
        failure."""
        while True:
            try:
                message = await self._call.read()
            except grpc.RpcError:
                self.finish()
                if self.input_error is None:
                    raise
                raise self.input_error from None
            except BaseException:
                self.finish()
                raise
            if message is grpc.aio.EOF:
                self.finish()
                if self.input_error is not None:
                    raise self.input_error
                return message
            if isinstance(message, list):
                return message
            kind = message.WhichOneof("kind")
            if kind == "credit":
                self._credit[0] += message.credit.items
                self._credit[1] += message.credit.bytes
                self._credited.set()
            elif kind == "handler_call":
                self._spawn(self._run_handler(message.handler_call))
            elif kind == "result":
                self.finish()  # the call's last message: nothing more is written (a late handler reply)
                return message.result

    def finish(self) -> None:
        """The call is over (or abandoned): stop the input, the handlers and the writer."""
        if self._over:
            return
        self._over = True
        self._credited.set()
        self._outgoing.put_nowait(_STOP)  # wakes the writer (it stops there; a write under way completes)
        for task in list(self._tasks):
            task.cancel()

    def cancel(self) -> None:
        self._call.cancel()
        self.finish()


class _DuplexBatches:
    """What :class:`AsyncChunkStream` reads: a duplex call's chunk batches (its result is the wrong shape)."""

    def __init__(self, duplex: _AsyncDuplex) -> None:
        self._duplex = duplex

    async def read(self) -> Any:
        message = await self._duplex.read()
        if message is grpc.aio.EOF or isinstance(message, list):
            return message
        raise _WrongShape

    def cancel(self) -> None:
        self._duplex.cancel()


class _WrongShape(Exception):
    """A duplex call answered with a result where chunks were expected."""


class AsyncChunkStream:
    """An async iterator of :class:`Chunk` over a running streaming call; ``aclose()`` cancels it."""

    def __init__(self, call: Any, timeout: float | None = None, tool: str = "") -> None:
        self._call = call
        self._timeout = timeout  # named by the error of a call past its deadline
        self._tool = tool
        self._ready: collections.deque[Decoded] = collections.deque()
        self._done = False

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> Chunk:
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            try:
                batch = await self._call.read()
            except grpc.RpcError as error:
                self._done = True
                raise translate(error, streaming=True, timeout=self._timeout) from None
            except _WrongShape:
                self._done = True
                self._call.cancel()
                raise wrong_duplex_shape(self._tool, streaming=True) from None
            except BaseException:  # a duplex call's failed input
                self._done = True
                raise
            if batch is grpc.aio.EOF:
                self._done = True
                raise StopAsyncIteration
            self._ready.extend(batch)
        seq, data, content_type, is_final, meta = self._ready.popleft()
        return Chunk(seq, codec.decode_value(data, content_type), content_type, is_final, meta)

    async def aclose(self) -> None:
        """Cancel the call on the worker (a no-op once the stream has ended)."""
        self._done = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # dropped without aclose() (a ``break`` out of ``async for``): stop the call on the worker
        with contextlib.suppress(Exception):  # the loop may already be closed at interpreter exit
            self._call.cancel()


class AsyncClient(Connection):
    """A ``grpc.aio`` connection to one Krait worker at ``target`` (``host:port``).

    ``timeout`` (seconds) is the default deadline of every call; ``session_id`` the default session;
    ``token`` (by default ``token_file``'s, else ``$KRAIT_TOKEN``, else the file ``$KRAIT_TOKEN_FILE`` names), ``tls``
    and ``channel`` (a ``grpc.aio.Channel``) as for :class:`~python_worker.client.Client`.
    """

    _grpc = grpc.aio

    # -- calls ----------------------------------------------------------------------------------------------
    async def execute(self, tool: str, /, **args: Any) -> Any:
        """Run a non-streaming tool with keyword arguments and return its decoded value."""
        return await self.call(tool, args)

    def execute_stream(self, tool: str, /, **args: Any) -> AsyncChunkStream:
        """Start a streaming tool with keyword arguments; ``async for`` over the result for its chunks."""
        return self.stream(tool, args)

    async def call(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: AsyncInput | None = None,
        handlers: Mapping[str, AsyncHandler] | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`execute` with arguments as a mapping and per-call options; ``input`` (an iterable or async
        iterable) and ``handlers`` (plain or async callables) make it an ExecuteToolDuplex, as for
        :meth:`Client.call <python_worker.client.Client.call>`."""
        response = await self.call_raw(
            tool, args, input=input, handlers=handlers, timeout=timeout, session_id=session_id, metadata=metadata
        )
        return codec.decode_value(response.data, response.content_type)

    async def call_raw(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: AsyncInput | None = None,
        handlers: Mapping[str, AsyncHandler] | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Like :meth:`call` but returns the ExecuteToolResponse (data, content_type, metadata)."""
        request = self._request(tool, args, session_id, metadata)
        try:
            if input is None and handlers is None:
                return await self._stub.ExecuteTool(request, **self._call_options(timeout))
            return await self._duplex_result(request, input, handlers, timeout)
        except grpc.RpcError as error:
            raise translate(error, streaming=False, timeout=self._timeout(timeout)) from None

    async def _duplex_result(
        self,
        request: Any,
        input: AsyncInput | None,
        handlers: Mapping[str, AsyncHandler] | None,
        timeout: float | None,
    ) -> Any:
        duplex = _AsyncDuplex(self._duplex, request, input, handlers, self._call_options(timeout))
        result = None
        try:
            while (message := await duplex.read()) is not grpc.aio.EOF:  # to the end: a failed input raises there
                if isinstance(message, list):
                    raise wrong_duplex_shape(request.tool_name, streaming=False)
                result = message
        finally:
            duplex.cancel()  # a no-op once the call has ended
        if result is None:
            raise KraitError(grpc.StatusCode.INTERNAL, f"{request.tool_name}: the call ended without a result")
        return result

    def stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: AsyncInput | None = None,
        handlers: Mapping[str, AsyncHandler] | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncChunkStream:
        """:meth:`execute_stream` with arguments as a mapping and per-call options; ``input`` and ``handlers``
        as for :meth:`call`."""
        request = self._request(tool, args, session_id, metadata)
        if input is None and handlers is None:
            call = self._batched(request, **self._call_options(timeout))
            return AsyncChunkStream(call, self._timeout(timeout), tool)
        duplex = _AsyncDuplex(self._duplex, request, input, handlers, self._call_options(timeout))
        return AsyncChunkStream(_DuplexBatches(duplex), self._timeout(timeout), tool)

    # -- worker and sessions --------------------------------------------------------------------------------
    async def ping(self, message: str = "", *, timeout: float = 5.0) -> Any:
        """The worker's PingResponse (worker_id, adapter, pid, uptime_ms)."""
        return await self._stub.Ping(pb.PingRequest(message=message), timeout=timeout, metadata=self._auth)

    async def list_tools(self, *, timeout: float = 10.0) -> list[Any]:
        """Every tool of the worker (name, description, supports_streaming, parameter and result schemas)."""
        return list((await self._stub.ListTools(pb.ListToolsRequest(), timeout=timeout, metadata=self._auth)).tools)

    async def initialize_session(self, session_id: str, metadata: Mapping[str, str] | None = None) -> bool:
        request = pb.InitializeSessionRequest(session_id=session_id, metadata=dict(metadata or {}))
        return bool((await self._stub.InitializeSession(request, timeout=10.0, metadata=self._auth)).created)

    async def cleanup_session(self, session_id: str) -> bool:
        request = pb.CleanupSessionRequest(session_id=session_id)
        return bool((await self._stub.CleanupSession(request, timeout=10.0, metadata=self._auth)).existed)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected (raises ``TimeoutError`` after ``timeout``)."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
