"""What the sync :class:`~python_worker.client.Client` and the asyncio
:class:`~python_worker.aio_client.AsyncClient` share: chunks, the errors a call raises, how a request is built,
the pieces of the duplex protocol (input items, handler replies), and the connection (channel, token, defaults).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import grpc
import numpy as np

from . import codec
from .errors import deadline_message, tool_error_from_rpc_error
from .proto import pb, pb_grpc
from .transports.grpc.channel import channel_options
from .transports.grpc.security import ClientTLS, client_metadata
from .transports.security import client_token
from .wire import decode_batch, read_varint


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


def translate(error: grpc.RpcError, *, streaming: bool, timeout: float | None = None) -> KraitError:
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


class Connection:
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
