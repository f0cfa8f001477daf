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
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator, Mapping
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
from .wire import decode_batch

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


def _translate(error: grpc.RpcError, *, streaming: bool, timeout: float | None = None) -> KraitError:
    code = error.code()
    details = tool_error_from_rpc_error(error)
    message = error.details() or code.name
    cls = _ERRORS.get(code, KraitError)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return cls(code, deadline_message(timeout))
    if details is None:
        return cls(code, message)
    if details.type == "WrongRpc":
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


class ChunkStream:
    """An iterator of :class:`Chunk` over a running streaming call; ``close()`` cancels it."""

    def __init__(self, call: Any, timeout: float | None = None) -> None:
        self._call = call
        self._timeout = timeout  # named by the error of a call past its deadline
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
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`execute` with arguments as a mapping and per-call options."""
        response = self.call_raw(tool, args, timeout=timeout, session_id=session_id, metadata=metadata)
        return codec.decode_value(response.data, response.content_type)

    def call_raw(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Like :meth:`call` but returns the ExecuteToolResponse (data, content_type, metadata)."""
        request = self._request(tool, args, session_id, metadata)
        try:
            return self._stub.ExecuteTool(request, **self._call_options(timeout))
        except grpc.RpcError as error:
            raise _translate(error, streaming=False, timeout=self._timeout(timeout)) from None

    def stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChunkStream:
        """:meth:`execute_stream` with arguments as a mapping and per-call options."""
        return ChunkStream(
            self._batched(self._request(tool, args, session_id, metadata), **self._call_options(timeout)),
            self._timeout(timeout),
        )

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
