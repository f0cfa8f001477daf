"""What a tool's exception tells its caller beyond its message: its public fields, as ``ToolError.details_json``.

``QuotaExceeded(retry_after=2.5)`` reaches the caller as ``{"retry_after": 2.5}``: the exception's attributes
whose names do not start with ``_``, or, when it declares a ``details`` mapping, exactly that mapping. Values
JSON cannot hold appear as their ``repr()``. Error details travel in the status trailer, whose size is bounded
(see :mod:`python_worker.errors`: the message, the details and the traceback share about 7000 bytes on the
wire, the traceback giving way first): details over :data:`MAX_DETAILS_BYTES` (UTF-8) are replaced by a note
saying so, and logged whole by the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import codec

log = logging.getLogger("krait.worker")

MAX_DETAILS_BYTES = 1500


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
    encoded = codec.encode_json({k: _jsonable(v) for k, v in fields.items()})
    if len(encoded) <= MAX_DETAILS_BYTES:
        return encoded.decode()
    size, name = len(encoded), type(exc).__name__
    log.warning("details of %s (%d bytes, over the limit of %d): %s", name, size, MAX_DETAILS_BYTES, encoded.decode())
    note = f"the details of {size} bytes exceed the limit of {MAX_DETAILS_BYTES}; the worker's log has them"
    return codec.encode_json({"krait.details_omitted": note}).decode()
