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
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import grpc
import numpy as np

from . import codec
from .errors import deadline_message, tool_error_from_rpc_error
from .proto import pb, pb_grpc
from .transports.grpc.channel import channel_options
from .transports.grpc.security import ClientTLS, client_metadata
from .transports.security import client_token
from .wire import decode_batch, read_varint

if TYPE_CHECKING:
    from .aio_client import AsyncClient as AsyncClient


def __getattr__(name: str) -> Any:
    # AsyncClient lives in aio_client (which imports this module): loaded on first use, and grpc.aio with it
    if name == "AsyncClient":
        from .aio_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(slots=True)
class Chunk:
    """One chunk of a stream: ``data`` decoded by ``content_type`` (None for a synthetic final chunk)."""

    seq: int
    data: Any
    content_type: str
    is_final: bool
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_progress(self) -> bool:
        """True for chunks sent by ``ToolContext.report_progress``."""
        return self.metadata.get("krait.event") == "progress"


class KraitError(Exception):
    """A call failed. ``code`` is the gRPC status; ``type``/``traceback`` come from the worker when it sent them,
    ``details`` holds the public fields of the tool's exception (``{"retry_after": 2.5}``), if any."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        type: str = "",
        traceback: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.type = type
        self.traceback = traceback
        self.details: dict[str, Any] = details or {}


class ToolError(KraitError):
    """The tool raised a Python exception (``type`` is its class name, ``traceback`` the remote traceback)."""


class ToolNotFoundError(KraitError):
    """The worker has no tool of that name."""


class InvalidArgumentsError(KraitError):
    """The arguments do not fit the tool (the message names the argument)."""


class DeadlineExceededError(KraitError):
    """The call's timeout passed; the tool was cancelled on the worker."""


class UnauthenticatedError(KraitError):
    """The worker wants a token (``Client(..., token=...)``) and got none or a wrong one."""


_ERRORS = {
    grpc.StatusCode.UNKNOWN: ToolError,
    grpc.StatusCode.NOT_FOUND: ToolNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentsError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


# The worker's WrongRpc message names gRPC methods; a Python caller is told which method of Client to use.
_WRONG_RPC = {
    False: "{tool} is a streaming tool: use Client.execute_stream() or Client.stream()",
    True: "{tool} is not a streaming tool: use Client.execute() or Client.call()",
}


def _input_wanted(tool: str, message: str) -> str:
    """What a caller of a tool that reads an input stream is told when it sent none."""
    param = re.search(r"JSON array in '([^']+)'", message)
    whole = f", or give its whole input as a JSON array in the argument {param.group(1)!r}" if param else ""
    return f"{tool} reads an input stream: pass input= to call() or stream() (ExecuteToolDuplex){whole}"


def _translate(error: grpc.RpcError, *, streaming: bool, timeout: float | None = None) -> KraitError:
    code = error.code()
    details = tool_error_from_rpc_error(error)
    message = error.details() or code.name
    cls = _ERRORS.get(code, KraitError)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return cls(code, deadline_message(timeout))
    if details is None:
        return cls(code, message)
    if details.type == "WrongRpc" and "ExecuteToolDuplex" in message:
        message = f"WrongRpc: {_input_wanted(details.tool_name, message)}"
    elif details.type == "WrongRpc":
        message = f"WrongRpc: {_WRONG_RPC[streaming].format(tool=details.tool_name)}"
    fields = codec.decode_json(details.details_json) if details.details_json else {}
    return cls(code, message, type=details.type, traceback=details.traceback, details=fields)


def build_request(
    tool: str, args: Mapping[str, Any] | None, session_id: str, metadata: Mapping[str, str] | None
) -> Any:
    """An ExecuteToolRequest: JSON-able arguments in ``args_json``, arrays and bytes as binary arguments."""
    json_args: dict[str, Any] = {}
    binary: dict[str, Any] = {}
    for name, value in (args or {}).items():
        if isinstance(value, np.ndarray):
            binary[name] = pb.Blob(data=codec.encode_npy(value), content_type=codec.NPY)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            binary[name] = pb.Blob(data=bytes(value), content_type=codec.BYTES)
        else:
            json_args[name] = value
    return pb.ExecuteToolRequest(
        tool_name=tool,
        session_id=session_id,
        args_json=codec.encode_json(json_args).decode(),
        metadata=dict(metadata or {}),
        binary_args=binary,
    )


# -- streams both ways (ExecuteToolDuplex) ---------------------------------------------------------------------

DUPLEX_METHOD = "/krait.v1.ToolWorker/ExecuteToolDuplex"
# one InputBatch holds at most what is ready at once, up to this many items / bytes
INPUT_BATCH_ITEMS = 256
INPUT_BATCH_BYTES = 1 << 20
# InputEnd.code for an input that failed (any non-zero code does; gRPC's UNKNOWN)
INPUT_FAILED = 2

Handler = Callable[[Any], Any]


def decode_duplex(message: bytes) -> Any:
    """A DuplexResponse off the wire: a chunk batch as :func:`~python_worker.wire.decode_batch`'s tuples (a list;
    a large chunk's data stays a view of the message), anything else as the protobuf message."""
    if message[:1] == b"\x0a":  # field 1, chunks
        buf = memoryview(message)
        size, pos = read_varint(buf, 1)
        if pos + size == len(buf):
            return decode_batch(buf[pos:])  # type: ignore[arg-type]  # any buffer
    return pb.DuplexResponse.FromString(message)


def input_item(value: Any) -> Any:
    """An ``InputItem``: arrays as .npy, bytes as they are, anything else as JSON (empty content type)."""
    if isinstance(value, np.ndarray):
        return pb.InputItem(data=codec.encode_npy(value), content_type=codec.NPY)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return pb.InputItem(data=bytes(value), content_type=codec.BYTES)
    return pb.InputItem(data=codec.encode_json(value))


def check_input(input: Any) -> None:
    """Refuse an ``input=`` that is one value rather than a stream of items (iterating a str or a dict would
    send characters or keys)."""
    if isinstance(input, (str, bytes, bytearray, memoryview, Mapping, np.ndarray)):
        raise TypeError(
            f"input= takes an iterable of items (a list, a generator...), not a {type(input).__name__}:"
            " wrap a single item in a list"
        )


def input_end(error: BaseException | None = None) -> Any:
    """The DuplexRequest ending the input: it ended, or (``error``) it failed with that exception."""
    if error is None:
        return pb.DuplexRequest(input_end=pb.InputEnd())
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return pb.DuplexRequest(input_end=pb.InputEnd(code=INPUT_FAILED, message=message))


def coalesce(first: Any, more: Callable[[], Any]) -> tuple[Any, Any]:
    """One InputBatch request from ``first`` (an InputItem) and what ``more()`` has ready (it returns None when
    nothing is); also returns the first non-item message ``more()`` gave (or None)."""
    items, size = [first], len(first.data)
    while len(items) < INPUT_BATCH_ITEMS and size < INPUT_BATCH_BYTES:
        message = more()
        if message is None:
            break
        if not isinstance(message, pb.InputItem):
            return pb.DuplexRequest(input=pb.InputBatch(items=items)), message
        items.append(message)
        size += len(message.data)
    return pb.DuplexRequest(input=pb.InputBatch(items=items)), None


def handler_args(call: Any) -> Any:
    return codec.decode_json(call.args_json) if call.args_json.strip() else None


def handler_found(handlers: Mapping[str, Any], call: Any) -> tuple[Any, Any]:
    """``call``'s handler and None, or None and the DuplexRequest answering that there is none."""
    handler = handlers.get(call.name)
    if handler is None:
        known = ", ".join(sorted(handlers)) or "none"
        return None, handler_failure(call, "HandlerNotFound", f"no handler {call.name!r} (this call has: {known})")
    return handler, None


def handler_value(call: Any, value: Any) -> Any:
    """The DuplexRequest answering ``call`` with ``value`` (JSON, an array, bytes)."""
    try:
        data, content_type = codec.encode_value(value)
    except codec.EncodeError as exc:
        return handler_failure(call, "HandlerFailed", f"its value cannot be sent: {exc}")
    return pb.DuplexRequest(
        handler_reply=pb.HandlerReply(
            id=call.id, data=data, content_type="" if content_type == codec.JSON else content_type
        )
    )


def handler_raised(call: Any, exc: BaseException) -> Any:
    return handler_failure(call, "HandlerFailed", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def handler_failure(call: Any, kind: str, message: str) -> Any:
    return pb.DuplexRequest(
        handler_reply=pb.HandlerReply(id=call.id, error=pb.HandlerFailure(type=kind, message=message))
    )


def wrong_duplex_shape(tool: str, *, streaming: bool) -> KraitError:
    """The tool answered with chunks where a value was expected (``streaming`` False: ``call``), or with a value
    where chunks were (``stream``)."""
    return KraitError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"WrongRpc: {_WRONG_RPC[streaming].format(tool=tool)}",
        type="WrongRpc",
    )


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
            raise _translate(error, streaming=True, timeout=self._timeout) from None
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


class _Connection:
    """What :class:`Client` and :class:`~python_worker.aio_client.AsyncClient` share: the channel (made by
    ``_grpc``: the ``grpc`` module or ``grpc.aio``), the token, the default timeout and session, and how a call's
    request is built."""

    _grpc: Any = grpc

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        session_id: str = "",
        max_message_bytes: int = 64 << 20,
        channel: Any = None,
        token: str | None = None,
        token_file: str | None = None,
        tls: ClientTLS | bool | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.session_id = session_id
        self._owns_channel = channel is None
        options = channel_options(max_message_bytes)
        if channel is not None:
            self._channel = channel
        elif tls:
            tls = tls if isinstance(tls, ClientTLS) else ClientTLS()
            self._channel = self._grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])
        else:
            self._channel = self._grpc.insecure_channel(target, options=options)
        # a worker serving TCP needs a token by default: the caller's, else $KRAIT_TOKEN / $KRAIT_TOKEN_FILE
        self.token = token = client_token(token, token_file)
        self._auth = client_metadata(token)
        self._stub = pb_grpc.ToolWorkerStub(self._channel)  # type: ignore[no-untyped-call]  # generated
        self._batched = self._channel.unary_stream(
            "/krait.v1.ToolWorker/ExecuteStreamingToolBatched",
            request_serializer=pb.ExecuteToolRequest.SerializeToString,
            response_deserializer=decode_batch,
        )
        self._duplex = self._channel.stream_stream(
            DUPLEX_METHOD, request_serializer=pb.DuplexRequest.SerializeToString, response_deserializer=decode_duplex
        )

    def session(self, session_id: str) -> Self:
        """A client bound to ``session_id`` that shares this client's connection."""
        return type(self)(
            self.target, timeout=self.timeout, session_id=session_id, channel=self._channel, token=self.token
        )

    def _request(
        self, tool: str, args: Mapping[str, Any] | None, session_id: str | None, metadata: Mapping[str, str] | None
    ) -> Any:
        return build_request(tool, args, self.session_id if session_id is None else session_id, metadata)

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout or self.timeout

    def _call_options(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self._timeout(timeout), "metadata": self._auth}


class Client(_Connection):
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
            raise _translate(error, streaming=False, timeout=self._timeout(timeout)) from None

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
