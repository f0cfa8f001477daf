"""A result, a stream's summary or a tool's failure as an MCP ``CallToolResult``.

- A unary result: ``structuredContent`` is the HTTP front's answer ``{"result", "content_type", "metadata"}``
  (the value in the chunk JSON's forms), and one content block for clients that ignore structured content: the
  same JSON as text (what the MCP specification asks of a tool that returns structured content), or, for a binary
  value (a NumPy array, bytes, an Arrow stream), the bytes themselves as an embedded ``resource`` blob with its
  media type, which an MCP client can save or hand on without decoding our JSON; text (``text/plain``) as text.
- A stream (see :mod:`.calls`): ``{"chunk_count", "final", "chunks"?, "omitted_chunks"?}``, as JSON text too.
- A tool's failure: ``isError``, ``"<type>: <message> (details: {...})"`` as text for the model to read, and the
  HTTP front's error object ``{"type", "message", "code", "details"?, "traceback"?}`` in the result's ``_meta``
  under ``krait/error`` for programs. Not in ``structuredContent``: clients (the TypeScript SDK) check that
  against the tool's output schema even on an error.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import mcp_types as types
import orjson

from ... import codec
from ..http.chunks import Chunk, chunk_json, result_json

BINARY_URI = "krait://{worker}/{tool}/{what}"


def _text(value: bytes) -> types.TextContent:
    return types.TextContent(type="text", text=value.decode())


def _is_binary(content_type: str) -> bool:
    return bool(content_type) and content_type != codec.JSON and not content_type.startswith("text/")


def unary_result(tool: str, worker: str, data: bytes, content_type: str, metadata: Mapping[str, str]) -> Any:
    body = result_json(data, content_type, metadata)
    content: types.ContentBlock
    if _is_binary(content_type):
        uri = BINARY_URI.format(worker=worker, tool=tool, what="result")
        blob = types.BlobResourceContents(uri=uri, mime_type=content_type, blob=base64.b64encode(data).decode())
        content = types.EmbeddedResource(type="resource", resource=blob)
    elif content_type.startswith("text/"):
        content = types.TextContent(type="text", text=data.decode("utf-8", "replace"))
    else:
        content = _text(body)
    return types.CallToolResult(content=[content], structured_content=orjson.loads(body))


def chunk_text(chunk: Chunk, extra_meta: Mapping[str, str] | None = None) -> str:
    """A chunk as the text of a progress notification: the HTTP front's chunk JSON."""
    return chunk_json(chunk, extra_meta).decode()


def stream_result(final: Chunk, count: int, chunks: list[bytes] | None, omitted: int) -> Any:
    """The result that ends a stream: its final chunk, how many came before it, and those chunks themselves when
    they were not sent as progress (``chunks``; ``omitted``: the oldest ones left out to keep it bounded)."""
    parts = [b'{"chunk_count":', str(count).encode(), b',"final":', chunk_json(final)]
    if chunks is not None:
        parts += [b',"chunks":[', b",".join(chunks), b"]"]
        if omitted:
            parts += [b',"omitted_chunks":', str(omitted).encode()]
    body = b"".join(parts) + b"}"
    return types.CallToolResult(content=[_text(body)], structured_content=orjson.loads(body))


ERROR_META = "krait/error"


def error_result(error: dict[str, Any]) -> Any:
    text = f"{error.get('type') or error.get('code')}: {error.get('message', '')}"
    if "details" in error:
        text += f" (details: {orjson.dumps(error['details']).decode()})"
    # not structuredContent: clients check it against the tool's output schema, error or not
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], meta={ERROR_META: error}, is_error=True
    )
