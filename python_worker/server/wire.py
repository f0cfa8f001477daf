"""Encoding ``ToolChunkBatch``, the hot path of every Krait stream.

Small chunks go through the generated protobuf classes (upb's C encoder: ~0.7 µs a chunk, faster than any
Python-level encoding). Large payloads are framed by hand: through a protobuf message they would be copied
three times (into the message, out of it, and into the batch); framed by hand, once. Both halves concatenate,
because a repeated field's serialized entries simply follow each other. The hand-framed format is protobuf's
(field numbers from worker.proto):

    ToolChunkBatch = { 0x0a len ToolChunk }*
    ToolChunk      = [0x08 varint seq] [0x12 len data] [0x1a len content_type] [0x20 01 is_final]
                     { 0x2a len (0x0a len key 0x12 len value) }*      (metadata map entries)

Fields holding proto3 defaults (0, empty, false) are omitted, as protobuf does. A test parses the output with
the generated protobuf classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .. import codec
from ..proto import pb

# A chunk as the server queues it: (seq, data, content_type, is_final, metadata or None)
Chunk = tuple[int, bytes, str, bool, "Mapping[str, str] | None"]

_SMALL = [bytes([n]) for n in range(128)]


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, value: bytes) -> bytes:
    return tag + varint(len(value)) + value


# the content types nearly every chunk carries, pre-encoded
_CONTENT_TYPES = {ct: _field(b"\x1a", ct.encode()) for ct in (codec.JSON, codec.NPY, codec.BYTES, codec.TEXT)}


def _metadata(meta: Mapping[str, str]) -> list[bytes]:
    parts = []
    for key, value in meta.items():
        entry = _field(b"\x0a", key.encode()) + _field(b"\x12", str(value).encode())
        parts.append(_field(b"\x2a", entry))
    return parts


# payloads from this size up are framed by hand
LARGE = 32 << 10


def encode_batch(chunks: Iterable[Chunk]) -> bytes:
    """The serialized ``ToolChunkBatch`` holding ``chunks``, in order."""
    out: list[bytes] = []
    small = pb.ToolChunkBatch()
    for chunk in chunks:
        seq, data, content_type, is_final, meta = chunk
        if len(data) < LARGE:
            small.chunks.add(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)
            continue
        if small.chunks:
            out.append(small.SerializeToString())
            small = pb.ToolChunkBatch()
        _frame(chunk, out)
    if small.chunks:
        out.append(small.SerializeToString())
    return out[0] if len(out) == 1 else b"".join(out)


def _frame(chunk: Chunk, out: list[bytes]) -> None:
    """Append the wire form of one batch entry holding ``chunk`` to ``out`` (its data is not copied here)."""
    seq, data, content_type, is_final, meta = chunk
    head = [b"\x08" + varint(seq)] if seq else []
    head.append(b"\x12" + varint(len(data)))
    tail = [_CONTENT_TYPES.get(content_type) or _field(b"\x1a", content_type.encode())] if content_type else []
    if is_final:
        tail.append(b"\x20\x01")
    if meta:
        tail.extend(_metadata(meta))
    size = sum(map(len, head)) + len(data) + sum(map(len, tail))
    out.append(b"\x0a" + varint(size))
    out.extend(head)
    out.append(data)
    out.extend(tail)
