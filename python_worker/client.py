"""A Python client for Krait workers: ``execute`` for unary tools, ``execute_stream`` for streams.

    with Client("127.0.0.1:50051") as client:
        print(client.execute("add", a=1, b=2))
        with client.execute_stream("stream_progress", steps=3) as chunks:
            for chunk in chunks:
                print(chunk.data, chunk.is_final)

:class:`AsyncClient` (``python_worker.aio_client``, on ``grpc.aio``) is the same client for asyncio code.

Streams use the batched RPC (many chunks per gRPC message) and yield one :class:`Chunk` per tool yield, decoded
by content type. Closing a stream (or leaving its ``with`` block, or breaking out of a ``for`` over it and
dropping it) cancels the call on the worker. NumPy arrays and bytes given as arguments travel as binary
arguments, never inside the JSON.

Streams both ways: ``call``/``stream`` with ``input=`` (an iterable of JSON values, NumPy arrays or bytes: the
tool's input stream) or ``handlers=`` (``{"name": callable}``: what the tool's ``ctx.call(name, args)`` runs)
use ExecuteToolDuplex. The input is pulled lazily, only as the worker grants credit (an endless generator
works); an input that raises ends the call and the client raises its exception.

    with Client("127.0.0.1:50051") as client:
        total = client.call("sum_input", input=({"i": i} for i in range(1000)))
        answer = client.call("ask", {"name": "lookup"}, handlers={"lookup": lambda args: 42})
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from . import codec
from .client_common import (
    Chunk,
    Connection,
    DeadlineExceededError,
    Handler,
    InvalidArgumentsError,
    KraitError,
    ToolError,
    ToolNotFoundError,
    UnauthenticatedError,
    build_request,
    check_input,
    coalesce,
    handler_args,
    handler_found,
    handler_raised,
    handler_value,
    input_end,
    input_item,
    translate,
    wrong_duplex_shape,
)
from .proto import pb

if TYPE_CHECKING:
    from .aio_client import AsyncClient as AsyncClient


__all__ = [
    "AsyncClient",
    "Chunk",
    "ChunkStream",
    "Client",
    "DeadlineExceededError",
    "InvalidArgumentsError",
    "KraitError",
    "ToolError",
    "ToolNotFoundError",
    "UnauthenticatedError",
    "build_request",
]


def __getattr__(name: str) -> Any:
    # AsyncClient lives in aio_client (which imports this module): loaded on first use, and grpc.aio with it
    if name == "AsyncClient":
        from .aio_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Duplex:
    """One ExecuteToolDuplex call of the sync client. The request side is a generator grpc's own thread drains
    from a queue: the start, input batches (an input thread pulls the caller's iterable only within the credit
    the worker grants), the input's end, handler replies (each handler runs on a thread of its own, so a slow
    one holds up neither the input nor the output). The response side (:meth:`messages`) is read by the
    caller's thread: credit and handler calls are handled there, chunk batches and the result handed on. The
    request side stays open until the call ends: a handler may still be called after the input has ended."""

    def __init__(
        self,
        method: Any,
        request: Any,
        input: Iterable[Any] | None,
        handlers: Mapping[str, Handler] | None,
        options: Mapping[str, Any],
    ) -> None:
        self._handlers = dict(handlers or {})
        self._outgoing: queue.SimpleQueue[Any] = queue.SimpleQueue()  # None: the call is over
        self._cond = threading.Condition(threading.Lock())
        self._credit = [0, 0]
        self._over = False
        self.input_error: BaseException | None = None  # the caller's input raised: the call raises it
        check_input(input)
        source = iter(input) if input is not None else None  # not an iterable: TypeError here, in the caller
        self._call = method(self._requests(pb.DuplexRequest(start=request)), **options)
        if source is None:
            self._outgoing.put(input_end())
        else:
            threading.Thread(target=self._pump, args=(source,), name="krait-input", daemon=True).start()

    def _requests(self, start: Any) -> Iterator[Any]:
        yield start
        pending = None
        while True:
            message = pending if pending is not None else self._outgoing.get()
            pending = None
            if message is None:
                return  # the call is over: the request side closes
            if isinstance(message, pb.InputItem):
                message, pending = coalesce(message, self._ready)
            yield message

    def _ready(self) -> Any:
        try:
            return self._outgoing.get_nowait()
        except queue.Empty:
            return None

    def _pump(self, source: Iterator[Any]) -> None:
        """The input thread: the caller's items, as far as the credit goes, then the input's end."""
        try:
            while self._wait_credit():
                try:
                    value = next(source)
                except StopIteration:
                    self._outgoing.put(input_end())
                    return
                item = input_item(value)
                with self._cond:
                    self._credit[0] -= 1
                    self._credit[1] -= len(item.data)
                self._outgoing.put(item)
        except Exception as exc:
            self.input_error = exc
            self._outgoing.put(input_end(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # a generator left early (the tool returned first) runs its finally here

    def _wait_credit(self) -> bool:
        with self._cond:
            while not self._over and (self._credit[0] <= 0 or self._credit[1] <= 0):
                self._cond.wait()
            return not self._over

    def _run_handler(self, call: Any) -> None:
        handler, reply = handler_found(self._handlers, call)
        if handler is not None:
            try:
                reply = handler_value(call, handler(handler_args(call)))
            except Exception as exc:
                reply = handler_raised(call, exc)
        if not self._over:
            self._outgoing.put(reply)

    def messages(self) -> Iterator[Any]:
        """Chunk batches (lists of decoded tuples) and the result (an ExecuteToolResponse), until the call ends;
        raises ``grpc.RpcError`` for its status (or, once the caller's input failed, that failure)."""
        try:
            for message in self._call:
                if isinstance(message, list):
                    yield message
                    continue
                kind = message.WhichOneof("kind")
                if kind == "credit":
                    with self._cond:
                        self._credit[0] += message.credit.items
                        self._credit[1] += message.credit.bytes
                        self._cond.notify()
                elif kind == "handler_call":
                    threading.Thread(
                        target=self._run_handler, args=(message.handler_call,), name="krait-handler", daemon=True
                    ).start()
                elif kind == "result":
                    yield message.result
        except grpc.RpcError:
            if self.input_error is None:
                raise
        finally:
            self.finish()
        if self.input_error is not None:
            raise self.input_error

    def finish(self) -> None:
        """The call is over (or abandoned): stop the input thread and close the request side."""
        with self._cond:
            if self._over:
                return
            self._over = True
            self._cond.notify_all()
        self._outgoing.put(None)

    def cancel(self) -> None:
        self._call.cancel()
        self.finish()

    # what ChunkStream iterates: the chunk batches
    def __iter__(self) -> Iterator[Any]:
        for message in self.messages():
            if not isinstance(message, list):  # a unary tool's result
                raise _WrongShape
            yield message


class _WrongShape(Exception):
    """A duplex call answered with a result where chunks were expected (or the other way round)."""


class ChunkStream:
    """An iterator of :class:`Chunk` over a running streaming call; ``close()`` cancels it."""

    def __init__(self, call: Any, timeout: float | None = None, tool: str = "") -> None:
        self._call = call
        self._timeout = timeout  # named by the error of a call past its deadline
        self._tool = tool
        self._closed = False
        self._chunks = self._iterate()

    def _iterate(self) -> Generator[Chunk, None, None]:
        decode = codec.decode_value
        try:
            # each message arrives as decode_batch's tuples: a large chunk's data is a view of the message, so
            # an array is decoded in place
            for batch in self._call:
                for seq, data, content_type, is_final, meta in batch:
                    yield Chunk(seq, decode(data, content_type), content_type, is_final, meta)
        except grpc.RpcError as error:
            if self._closed and error.code() == grpc.StatusCode.CANCELLED:
                return  # close() from another thread: the iteration just ends
            raise translate(error, streaming=True, timeout=self._timeout) from None
        except _WrongShape:
            self._call.cancel()
            raise wrong_duplex_shape(self._tool, streaming=True) from None

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def close(self) -> None:
        """Cancel the call on the worker (a no-op once the stream has ended). Safe from any thread: a thread
        iterating the stream meanwhile sees it end."""
        self._closed = True
        self._call.cancel()
        # "generator already executing": another thread is in next(), and its loop ends with the call
        with contextlib.suppress(ValueError):
            self._chunks.close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._call.cancel()


class Client(Connection):
    """A connection to one Krait worker at ``target`` (``host:port``).

    ``timeout`` (seconds) is the default deadline of every call; ``session_id`` the default session.
    ``token`` (or the one in ``token_file``; by default ``$KRAIT_TOKEN``, else the file ``$KRAIT_TOKEN_FILE``
    names) is sent as ``authorization: Bearer <token>``; ``tls`` (True for the system's CA roots, or a
    :class:`ClientTLS` naming a CA file and the client's certificate) makes the connection TLS; ``channel`` an
    existing ``grpc.Channel`` to use instead.
    """

    # -- calls ----------------------------------------------------------------------------------------------
    def execute(self, tool: str, /, **args: Any) -> Any:
        """Run a non-streaming tool with keyword arguments and return its decoded value."""
        return self.call(tool, args)

    def execute_stream(self, tool: str, /, **args: Any) -> ChunkStream:
        """Start a streaming tool with keyword arguments; iterate the result for its chunks."""
        return self.stream(tool, args)

    def call(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: Iterable[Any] | None = None,
        handlers: Mapping[str, Handler] | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`execute` with arguments as a mapping and per-call options. ``input``: the tool's input stream
        (any iterable of JSON values, NumPy arrays or bytes, pulled as the tool reads); ``handlers``: callables
        by name the tool may call (``ctx.call(name, args)`` runs ``handlers[name](args)``). Either makes the
        call an ExecuteToolDuplex; ``timeout`` covers the whole exchange."""
        response = self.call_raw(
            tool, args, input=input, handlers=handlers, timeout=timeout, session_id=session_id, metadata=metadata
        )
        return codec.decode_value(response.data, response.content_type)

    def call_raw(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        input: Iterable[Any] | None = None,
        handlers: Mapping[str, Handler] | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Like :meth:`call` but returns the ExecuteToolResponse (data, content_type, metadata)."""
        request = self._request(tool, args, session_id, metadata)
        try:
            if input is None and handlers is None:
                return self._stub.ExecuteTool(request, **self._call_options(timeout))
            return self._duplex_result(request, input, handlers, timeout)
        except grpc.RpcError as error:
            raise translate(error, streaming=False, timeout=self._timeout(timeout)) from None

    def _duplex_result(
        self, request: Any, input: Iterable[Any] | None, handlers: Mapping[str, Handler] | None, timeout: float | None
    ) -> Any:
        duplex = _Duplex(self._duplex, request, input, handlers, self._call_options(timeout))
        result = None
        try:
            for message in duplex.messages():  # to the call's end: a failed input raises there
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
        input: Iterable[Any] | None = None,
        handlers: Mapping[str, Handler] | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChunkStream:
        """:meth:`execute_stream` with arguments as a mapping and per-call options; ``input`` and ``handlers``
        as for :meth:`call` (the tool may read and yield at once)."""
        request = self._request(tool, args, session_id, metadata)
        if input is None and handlers is None:
            return ChunkStream(self._batched(request, **self._call_options(timeout)), self._timeout(timeout), tool)
        duplex = _Duplex(self._duplex, request, input, handlers, self._call_options(timeout))
        return ChunkStream(duplex, self._timeout(timeout), tool)

    # -- worker and sessions --------------------------------------------------------------------------------
    def ping(self, message: str = "", *, timeout: float = 5.0) -> Any:
        """The worker's PingResponse (worker_id, adapter, pid, uptime_ms)."""
        return self._stub.Ping(pb.PingRequest(message=message), timeout=timeout, metadata=self._auth)

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The worker's ``grpc.health.v1`` status for ``service`` ("" the whole worker): ``"SERVING"``,
        ``"NOT_SERVING"`` (stopping)...; needs no token."""
        from grpc_health.v1 import health_pb2

        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        status = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def list_tools(self, *, timeout: float = 10.0) -> list[Any]:
        """Every tool of the worker (name, description, supports_streaming, parameters_schema_json)."""
        return list(self._stub.ListTools(pb.ListToolsRequest(), timeout=timeout, metadata=self._auth).tools)

    def metrics(self, *, timeout: float = 10.0) -> str:
        """The worker's Prometheus metrics in the text format (what ``--metrics-port`` serves at /metrics)."""
        return str(self._stub.Metrics(pb.MetricsRequest(), timeout=timeout, metadata=self._auth).text)

    def initialize_session(self, session_id: str, metadata: Mapping[str, str] | None = None) -> bool:
        request = pb.InitializeSessionRequest(session_id=session_id, metadata=dict(metadata or {}))
        return bool(self._stub.InitializeSession(request, timeout=10.0, metadata=self._auth).created)

    def cleanup_session(self, session_id: str) -> bool:
        return bool(
            self._stub.CleanupSession(
                pb.CleanupSessionRequest(session_id=session_id), timeout=10.0, metadata=self._auth
            ).existed
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (raises ``grpc.FutureTimeoutError`` after ``timeout``)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
