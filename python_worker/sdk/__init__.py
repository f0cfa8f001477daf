"""The adapter SDK: what an adapter author imports."""

from .adapter import AdapterPathError, BaseAdapter, load_adapter
from .chunk import StreamChunk
from .context import HandlerError, InputError, Session, ToolCancelled, ToolContext
from .files import FileArgumentError, open_path, resolve_path
from .tool import ArgumentError, ToolSpec, tool

__all__ = [
    "AdapterPathError",
    "ArgumentError",
    "BaseAdapter",
    "FileArgumentError",
    "HandlerError",
    "InputError",
    "Session",
    "StreamChunk",
    "ToolCancelled",
    "ToolContext",
    "ToolSpec",
    "load_adapter",
    "open_path",
    "resolve_path",
    "tool",
]
