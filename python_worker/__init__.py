"""Krait's Python worker: write adapters with ``@tool`` methods, serve them over gRPC, call them.

from python_worker import BaseAdapter, tool, StreamChunk, ToolContext
"""

from .sdk import BaseAdapter, Session, StreamChunk, ToolCancelled, ToolContext, tool

__all__ = ["BaseAdapter", "Session", "StreamChunk", "ToolCancelled", "ToolContext", "tool"]
