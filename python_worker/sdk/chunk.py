"""StreamChunk: what a streaming tool yields when it wants explicit control over a chunk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StreamChunk:
    """One chunk of a streaming tool's output.

    A plain ``yield value`` is ``StreamChunk(data=value)``. Set ``is_final=True`` on the last chunk to carry
    data on the final chunk itself (otherwise the server appends a synthetic final chunk). ``content_type``
    overrides the type inferred from ``data`` (e.g. ``"text/plain; charset=utf-8"``); ``metadata`` travels with
    the chunk as string pairs.
    """

    data: Any = None
    is_final: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
