"""What a tool's exception tells its caller beyond its message: its public fields, as ``ToolError.details_json``.

``QuotaExceeded(retry_after=2.5)`` reaches the caller as ``{"retry_after": 2.5}``: the exception's attributes
whose names do not start with ``_``, or, when it declares a ``details`` mapping, exactly that mapping. Values
JSON cannot hold appear as their ``repr()``. Error details travel in a gRPC trailer, whose size is bounded
(grpc's default limit for all metadata is 8 KiB, shared with the traceback): details longer than
:data:`MAX_DETAILS_CHARS` are replaced by a note saying so, and logged whole by the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import codec

log = logging.getLogger("krait.worker")

MAX_DETAILS_CHARS = 2000


def _fields(exc: BaseException) -> dict[str, Any]:
    declared = getattr(exc, "details", None)
    if isinstance(declared, Mapping):
        return {str(k): v for k, v in declared.items()}
    return {k: v for k, v in vars(exc).items() if not k.startswith("_")}


def _jsonable(value: Any) -> Any:
    try:
        codec.encode_json(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def details_json(exc: BaseException) -> str:
    """The JSON object of ``exc``'s public fields, or ``""`` when it has none."""
    fields = _fields(exc)
    if not fields:
        return ""
    text = codec.encode_json({k: _jsonable(v) for k, v in fields.items()}).decode()
    if len(text) <= MAX_DETAILS_CHARS:
        return text
    log.warning(
        "details of %s (%d characters, over the limit of %d): %s",
        type(exc).__name__,
        len(text),
        MAX_DETAILS_CHARS,
        text,
    )
    note = f"the details of {len(text)} characters exceed the limit of {MAX_DETAILS_CHARS}; the worker's log has them"
    return codec.encode_json({"krait.details_omitted": note}).decode()
