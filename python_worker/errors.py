"""Errors that end a call, and how they travel: a gRPC status plus a ``krait.v1.ToolError``.

The status message reads like Python (``ValueError: epochs must be > 0``); the ``grpc-status-details-bin``
trailer holds a ``google.rpc.Status`` whose ``details`` carry a ``krait.v1.ToolError`` with the exception type,
message, traceback and public fields (:mod:`python_worker.error_details`), so any gRPC client can show the
whole story.
"""

from __future__ import annotations

import traceback as tb
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

from .error_details import details_json
from .proto import pb
from .sdk.tool import ArgumentError

# A status travels in trailers, which clients bound: grpcio refuses trailers over 16 KiB, and over 8 KiB at
# random ("received metadata size exceeds soft limit"), and reports that instead of the error. What goes in is
# bounded by its size on the wire: the message twice (percent-encoded in grpc-message, in the base64
# grpc-status-details-bin), the traceback once. Messages and names, which may come from the caller (a 1 MB tool
# name, an argument name), keep their start and say their length; a traceback keeps its end, which holds the
# frames that matter, and says how much was cut (the worker's log has all of it).
MAX_MESSAGE_BYTES = 1000
MAX_TRACEBACK_BYTES = 4000
MAX_NAME_CHARS = 64
TRAILER_BUDGET = 7000  # bytes of grpc-message + grpc-status-details-bin: under 8 KiB with the other trailers


class CallError(Exception):
    """An error that ends a call with a given gRPC status code."""

    code = grpc.StatusCode.UNKNOWN
    error_type = "KraitError"

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, error_type: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if error_type is not None:
            self.error_type = error_type


class ToolNotFound(CallError):
    code = grpc.StatusCode.NOT_FOUND
    error_type = "ToolNotFound"


class InvalidArguments(CallError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "ArgumentError"


class WrongRpc(CallError):
    """A streaming tool called through the unary RPC, or the reverse."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "WrongRpc"


class ProtocolViolation(CallError):
    """The tool broke the streaming contract (e.g. yielded after its final chunk)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "StreamContractError"


class ResultError(CallError):
    """A tool's result (or one of its chunks) cannot be put on the wire: a NaN or an infinity in JSON, a type
    nothing encodes. A bug in the tool, like a broken stream contract; never sent as something else (``null``)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "ResultError"


class Overloaded(CallError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "WorkerOverloaded"


_FRAMEWORK = str(Path(__file__).parent)


def _tool_frames(trace: TracebackType | None) -> TracebackType | None:
    """Skip the worker's own frames at the top: the caller wants to see the tool's code."""
    while trace is not None and trace.tb_frame.f_code.co_filename.startswith(_FRAMEWORK) and trace.tb_next:
        trace = trace.tb_next
    return trace


def tool_traceback(exc: BaseException) -> str | None:
    """``exc``'s traceback from the tool's first frame on (the worker's own frames above it dropped), or None when
    no frame lies outside the worker: then it is a failure of Krait itself, whose whole traceback matters."""
    trace = exc.__traceback__
    frames = []
    while trace is not None:
        frames.append(trace.tb_frame.f_code.co_filename)
        trace = trace.tb_next
    if all(name.startswith(_FRAMEWORK) for name in frames):
        return None
    return "".join(tb.format_exception(type(exc), exc, _tool_frames(exc.__traceback__)))


def deadline_message(timeout: float | None) -> str:
    """What a call past its deadline says, on every Krait client (the Elixir pool's words too): grpc's own
    ("Deadline Exceeded", "Stream removed") depend on which side noticed first and name no duration."""
    if timeout is None:
        return "the call did not finish within its deadline"
    ms = round(timeout * 1000, 3)
    return f"the call did not finish within its deadline of {int(ms) if ms == int(ms) else ms} ms"


def clip(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def clip_bytes(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``text``, or as much of its start as fits in ``limit`` UTF-8 bytes and how long it was."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    return f"{data[:limit].decode('utf-8', 'ignore')}... ({len(text)} characters)"


def _clip_traceback(text: str, limit: int) -> str:
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    tail = data[len(data) - limit :].decode("utf-8", "ignore") if limit > 0 else ""
    cut = len(text) - len(tail)
    return f"... ({cut} characters of traceback omitted; the worker's log has all of it)\n" + tail


def _wire_size(message: str, status: status_pb2.Status) -> int:
    """Bytes of grpc-message (percent-encoded: all but printable ASCII take 3) and grpc-status-details-bin
    (base64 of the serialized status)."""
    encoded = message.encode("utf-8", "backslashreplace")
    percent = len(encoded) + 2 * sum(1 for b in encoded if b < 0x20 or b > 0x7E or b == 0x25)
    return percent + (int(status.ByteSize()) * 4 + 2) // 3


def as_call_error(exc: BaseException) -> BaseException:
    """``exc``, or the :class:`InvalidArguments` it stands for when a tool raised the SDK's
    :class:`~python_worker.sdk.tool.ArgumentError` (a :class:`~python_worker.sdk.files.FileArgumentError`...)."""
    if isinstance(exc, ArgumentError) and not isinstance(exc, CallError):
        converted = InvalidArguments(str(exc), error_type=exc.error_type)
        converted._krait_call = getattr(exc, "_krait_call", None)  # type: ignore[attr-defined]
        return converted
    return exc


def to_status(exc: BaseException, *, tool_name: str, worker_id: str) -> grpc.Status:
    """The gRPC status (with ToolError details) that reports ``exc``."""
    exc = as_call_error(exc)
    if isinstance(exc, CallError):
        code, error_type, trace = exc.code, exc.error_type, ""
    else:
        code, error_type = grpc.StatusCode.UNKNOWN, type(exc).__name__
        trace = "".join(tb.format_exception(type(exc), exc, _tool_frames(exc.__traceback__)))
        if type(exc).__name__ == "ToolCancelled":
            code = grpc.StatusCode.CANCELLED
    text = clip_bytes(str(exc))
    message = f"{clip(error_type)}: {text}"
    fields = "" if isinstance(exc, CallError) else details_json(exc)  # bounded: error_details.MAX_DETAILS_BYTES
    limit = MAX_TRACEBACK_BYTES
    while True:
        error = pb.ToolError(
            type=clip(error_type),
            message=text,
            traceback=_clip_traceback(trace, limit) if trace else "",
            tool_name=clip(tool_name),
            worker_id=worker_id,
            details_json=fields,
        )
        detail = any_pb2.Any()
        detail.Pack(error)
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        excess = _wire_size(message, status) - TRAILER_BUDGET
        if excess <= 0 or not trace or limit == 0:
            break
        limit = max(0, limit - excess)  # a traceback byte costs 4/3 on the wire: this converges in a step or two
    return rpc_status.to_status(status)


def tool_error_from_rpc_error(error: grpc.RpcError) -> pb.ToolError | None:
    """The ToolError inside a failed call's status details, if the server sent one."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details that do not match the status (e.g. the client's own RESOURCE_EXHAUSTED)
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(pb.ToolError.DESCRIPTOR):
            out = pb.ToolError()
            detail.Unpack(out)
            return out
    return None
