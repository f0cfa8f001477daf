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

# Trailers are bounded (grpc's default max metadata size is 8 KiB): keep the end of a long traceback,
# which holds the frames that matter, and say how much was cut.
MAX_TRACEBACK_CHARS = 4000


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


class Overloaded(CallError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "WorkerOverloaded"


_FRAMEWORK = str(Path(__file__).parent)


def _tool_frames(trace: TracebackType | None) -> TracebackType | None:
    """Skip the worker's own frames at the top: the caller wants to see the tool's code."""
    while trace is not None and trace.tb_frame.f_code.co_filename.startswith(_FRAMEWORK) and trace.tb_next:
        trace = trace.tb_next
    return trace


def _clip(text: str) -> str:
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    cut = len(text) - MAX_TRACEBACK_CHARS
    return f"... ({cut} characters of traceback omitted; the worker's log has all of it)\n" + text[cut:]


def to_status(exc: BaseException, *, tool_name: str, worker_id: str) -> grpc.Status:
    """The gRPC status (with ToolError details) that reports ``exc``."""
    if isinstance(exc, CallError):
        code, error_type, trace = exc.code, exc.error_type, ""
    else:
        code, error_type = grpc.StatusCode.UNKNOWN, type(exc).__name__
        trace = "".join(tb.format_exception(type(exc), exc, _tool_frames(exc.__traceback__)))
        if type(exc).__name__ == "ToolCancelled":
            code = grpc.StatusCode.CANCELLED
    message = f"{error_type}: {exc}"
    error = pb.ToolError(
        type=error_type,
        message=str(exc),
        traceback=_clip(trace),
        tool_name=tool_name,
        worker_id=worker_id,
        details_json="" if isinstance(exc, CallError) else details_json(exc),
    )
    detail = any_pb2.Any()
    detail.Pack(error)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(status)


def tool_error_from_rpc_error(error: grpc.RpcError) -> pb.ToolError | None:
    """The ToolError inside a failed call's status details, if the server sent one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(pb.ToolError.DESCRIPTOR):
            out = pb.ToolError()
            detail.Unpack(out)
            return out
    return None
