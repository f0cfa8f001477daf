"""Errors over HTTP: ``{"error": {"type", "message", "code", "details"?, "traceback"?}}`` with the HTTP status of
the gRPC code. What an exception means (its code, its clipped message and traceback, its public fields) is
decided once, by :func:`python_worker.errors.to_status` through :meth:`Engine.status`, which also logs it; this
module only reads that status back as JSON.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson
from google.rpc import status_pb2

from ...engine import Engine
from ...errors import CallError, deadline_message
from ...proto import pb

HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


class HttpError(CallError):
    """A refusal by the HTTP front itself (bad query parameter, no token, ...)."""

    error_type = "HttpError"


def unauthenticated(message: str) -> HttpError:
    return HttpError(message, code=grpc.StatusCode.UNAUTHENTICATED, error_type="Unauthenticated")


def forbidden(message: str) -> HttpError:
    return HttpError(message, code=grpc.StatusCode.PERMISSION_DENIED, error_type="Forbidden")


def invalid(message: str) -> HttpError:
    return HttpError(message, code=grpc.StatusCode.INVALID_ARGUMENT, error_type="ArgumentError")


def deadline_exceeded(timeout_ms: int) -> CallError:
    return CallError(
        deadline_message(timeout_ms / 1000),  # the words of every Krait client
        code=grpc.StatusCode.DEADLINE_EXCEEDED,
        error_type="DeadlineExceeded",
    )


def cancelled(message: str = "the call was cancelled by its caller") -> CallError:
    return CallError(message, code=grpc.StatusCode.CANCELLED, error_type="Cancelled")


def error_object(engine: Engine, exc: BaseException, rpc: str, tool_name: str = "") -> tuple[int, dict[str, Any]]:
    """The HTTP status and the ``error`` object reporting ``exc`` (logged as :meth:`Engine.status` logs it)."""
    status = engine.status(exc, rpc, tool_name)
    code = status.code.name
    error: dict[str, Any] = {"type": "", "message": status.details, "code": code}
    for key, value in status.trailing_metadata or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(pb.ToolError.DESCRIPTOR):
                tool_error = pb.ToolError()
                detail.Unpack(tool_error)
                error["type"], error["message"] = tool_error.type, tool_error.message
                if tool_error.details_json:
                    error["details"] = orjson.loads(tool_error.details_json)
                if tool_error.traceback:
                    error["traceback"] = tool_error.traceback
    return http_status(code), error


def error_body(error: dict[str, Any]) -> bytes:
    return orjson.dumps({"error": error})
