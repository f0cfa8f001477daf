"""The adapter SDK: what an adapter author imports."""

from .adapter import AdapterPathError, BaseAdapter, load_adapter
from .chunk import StreamChunk
from .context import Session, ToolCancelled, ToolContext
from .tool import ArgumentError, ToolSpec, tool

__all__ = [
    "AdapterPathError",
    "ArgumentError",
    "BaseAdapter",
    "Session",
    "StreamChunk",
    "ToolCancelled",
    "ToolContext",
    "ToolSpec",
    "load_adapter",
    "tool",
]
