"""How a call that did not succeed is answered over MCP.

The specification separates the two: a tool's own failure is a *result* with ``isError`` (the model reads it and
can correct itself), while a call that could not be made is a JSON-RPC *error*. So:

- refused before the tool ran (the same checks and messages as every other front):
  an unknown tool or wrong arguments (``NOT_FOUND``, ``INVALID_ARGUMENT``) -> ``-32602`` Invalid params;
  no free call slot or session (``RESOURCE_EXHAUSTED``: ``WorkerOverloaded``, ``SessionLimit``) and a stopping
  worker (``UNAVAILABLE``) -> ``-32000`` (the server-defined range); ``data`` carries ``type`` and ``code``;
- anything after the tool started (it raised; a result the wire cannot carry; a chunk too large; a stream
  that broke its contract) -> ``isError`` with the error object (:func:`.results.error_result`);
- a failure of this front itself -> ``-32603`` Internal error, logged with its traceback, answered without it.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS

from ...engine import Engine
from ...errors import CallError
from ..http.errors import error_object
from .results import error_result

log = logging.getLogger("krait.worker")

SERVER_BUSY = -32000  # JSON-RPC's implementation-defined server errors: -32000 to -32099
_INVALID = {"INVALID_ARGUMENT", "NOT_FOUND"}
_BUSY_TYPES = {"WorkerOverloaded", "SessionLimit"}


def answer(engine: Engine, exc: BaseException, tool: str) -> Any:
    """The ``isError`` result reporting ``exc``; raises the :class:`MCPError` when it is a refusal."""
    if not isinstance(exc, CallError) and getattr(exc, "_krait_call", None) is None:
        log.error("tools/call %s: the MCP front failed", tool[:64], exc_info=exc)
        raise MCPError(INTERNAL_ERROR, "the worker failed to handle this request (its log has the details)")
    _, error = error_object(engine, exc, "tools/call", tool)  # logged as every front logs it
    code = error["code"]
    data = {key: error[key] for key in ("type", "code", "details") if key in error}
    if code in _INVALID:
        raise MCPError(INVALID_PARAMS, error["message"], data)
    if code == "UNAVAILABLE" or (code == "RESOURCE_EXHAUSTED" and error["type"] in _BUSY_TYPES):
        raise MCPError(SERVER_BUSY, error["message"], data)
    return error_result(error)


def invalid(message: str) -> MCPError:
    return MCPError(INVALID_PARAMS, message, {"type": "ArgumentError", "code": "INVALID_ARGUMENT"})
