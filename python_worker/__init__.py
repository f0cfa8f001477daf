"""Krait's Python worker: write adapters with ``@tool`` methods, serve them over gRPC, call them.

from python_worker import BaseAdapter, tool, StreamChunk, ToolContext
from python_worker import open_path  # a file the caller names, confined to KRAIT_DATA_ROOT
"""

from .sdk import (
    BaseAdapter,
    HandlerError,
    InputError,
    Session,
    StreamChunk,
    ToolCancelled,
    ToolContext,
    open_path,
    tool,
)

__all__ = [
    "BaseAdapter",
    "HandlerError",
    "InputError",
    "Session",
    "StreamChunk",
    "ToolCancelled",
    "ToolContext",
    "open_path",
    "tool",
]
