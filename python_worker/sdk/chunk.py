"""StreamChunk: what a streaming tool yields when it wants explicit control over a chunk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class StreamChunk(Generic[T]):
    """One chunk of a streaming tool's output.

    A plain ``yield value`` is ``StreamChunk(data=value)``. Set ``is_final=True`` on the last chunk to carry
    data on the final chunk itself (otherwise the server appends a synthetic final chunk). ``content_type``
    overrides the type inferred from ``data`` (e.g. ``"text/plain; charset=utf-8"``); ``metadata`` travels with
    the chunk as string pairs. Annotate a generator ``Iterator[StreamChunk[Progress]]`` and the tool's result
    schema describes ``Progress``.
    """

    data: T = None  # type: ignore[assignment]
    is_final: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def chunk_data_type(annotation: Any) -> Any:
    """The data type of ``StreamChunk[T]`` (``Any`` for a bare ``StreamChunk``); other annotations unchanged."""
    if annotation is StreamChunk:
        return Any
    if getattr(annotation, "__origin__", None) is StreamChunk:
        return annotation.__args__[0]
    return annotation
