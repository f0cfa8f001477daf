"""The chunk JSON shared by SSE and WebSocket: ``{"seq", "content_type", "data", "metadata"}``.

A JSON payload is spliced in as the bytes the tool's value was encoded to (no decode and re-encode); a NumPy
array becomes its dtype, shape and base64 bytes (or, over WebSocket, a binary frame whose JSON header holds dtype
and shape, followed by the raw bytes); text is inline; anything else (bytes, Arrow) is ``{"base64": ...}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ... import codec

Chunk = tuple[int, bytes, str, bool, dict[str, str] | None]


def _array(data: bytes) -> tuple[np.ndarray, memoryview]:
    """The array of an .npy payload and its raw bytes in C order."""
    array = codec.decode_npy(data)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return array, array.reshape(-1).view(np.uint8).data


def value_json(data: bytes, content_type: str) -> bytes:
    """A payload as the JSON of the contract's ``data`` (or a unary call's ``result``)."""
    if content_type == codec.JSON:
        return data or b"null"
    if content_type == codec.NPY:
        array, raw = _array(data)
        return orjson.dumps(
            {"dtype": array.dtype.str, "shape": list(array.shape), "base64": base64.b64encode(raw).decode()}
        )
    if content_type.startswith("text/"):
        return orjson.dumps(data.decode("utf-8", "replace"))
    if not content_type and not data:
        return b"null"
    return orjson.dumps({"base64": base64.b64encode(data).decode()})


def _meta(metadata: Mapping[str, str] | None) -> bytes:
    return orjson.dumps(dict(metadata) if metadata else {})


def chunk_json(chunk: Chunk, extra_meta: Mapping[str, str] | None = None) -> bytes:
    """The chunk JSON of an engine chunk ``(seq, data, content_type, is_final, metadata)``."""
    seq, data, content_type, _, meta = chunk
    if extra_meta:
        meta = {**(meta or {}), **extra_meta}
    return b"".join(
        (
            b'{"seq":',
            str(seq).encode(),
            b',"content_type":',
            orjson.dumps(content_type),
            b',"data":',
            value_json(data, content_type),
            b',"metadata":',
            _meta(meta),
            b"}",
        )
    )


def ws_frame(call_id: str, event: str, chunk: Chunk, extra_meta: Mapping[str, str] | None = None) -> str | bytes:
    """A chunk's WebSocket frame: text ``{"id", "event", "chunk"}``, or for a NumPy chunk the binary frame
    (4-byte big-endian header length, the JSON header with ``data: {"dtype", "shape"}``, the raw bytes)."""
    seq, data, content_type, _, meta = chunk
    if extra_meta:
        meta = {**(meta or {}), **extra_meta}
    if content_type != codec.NPY:
        body = chunk_json((seq, data, content_type, False, meta))
        return b"".join(
            (b'{"id":', orjson.dumps(call_id), b',"event":"', event.encode(), b'","chunk":', body, b"}")
        ).decode()
    array, raw = _array(data)
    header = orjson.dumps(
        {
            "id": call_id,
            "event": event,
            "chunk": {
                "seq": seq,
                "content_type": content_type,
                "data": {"dtype": array.dtype.str, "shape": list(array.shape)},
                "metadata": dict(meta) if meta else {},
            },
        }
    )
    return b"".join((len(header).to_bytes(4, "big"), header, raw))


def result_json(data: bytes, content_type: str, metadata: Mapping[str, str]) -> bytes:
    """A unary call's answer body: ``{"result", "content_type", "metadata"}``."""
    return b"".join(
        (
            b'{"result":',
            value_json(data, content_type),
            b',"content_type":',
            orjson.dumps(content_type),
            b',"metadata":',
            _meta(metadata),
            b"}",
        )
    )


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
