"""The MCP server of a worker: the ``mcp`` package's low-level ``Server`` answering ``tools/list`` and
``tools/call`` from the engine.

The low-level server rather than ``MCPServer`` (FastMCP): Krait's tools already have their schemas, validation,
threads and errors (the engine), and FastMCP would wrap each in a second signature, validation and result
conversion. The low-level server leaves exactly the protocol: the handshake and its versions, JSON-RPC framing
and its errors (unknown method: ``-32601``; params that are not ``tools/call``'s: ``-32602``),
``notifications/cancelled`` interrupting a handler, and the Streamable HTTP sessions.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server

from ...engine import Engine
from .calls import Calls
from .schemas import mcp_tools

INSTRUCTIONS = (
    "Krait worker tools. Streaming tools send each chunk as notifications/progress when the call carries a "
    "progress token (message: the chunk JSON), and end with {chunk_count, final}; without a token the result "
    "holds the chunks."
)


def _version() -> str:
    try:
        return version("krait")
    except PackageNotFoundError:
        return ""


def build_server(engine: Engine, calls: Calls) -> Server[Any]:
    tools = mcp_tools(engine)  # the specs are fixed once the adapter is loaded

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=tools)

    server: Server[Any] = Server(
        f"krait {engine.adapter_path}",
        version=_version(),
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=calls.call_tool,
    )
    # the package logs every HTTP session's start and end at INFO: a busy front's log would be mostly that
    logging.getLogger("mcp").setLevel(max(logging.WARNING, logging.getLogger("mcp").level))
    # Krait's engine makes its own spans (python_worker.tracing): no second, per-message one
    server.middleware = []
    return server
