"""Encoding and decoding ``ToolChunkBatch``, the hot path of every Krait stream.

Small chunks go through the generated protobuf classes (upb's C encoder: ~0.7 µs a chunk, faster than any
Python-level encoding). Large payloads are framed by hand: through a protobuf message they would be copied
three times (into the message, out of it, and into the batch); framed by hand, once. The server frames a
large chunk as soon as the tool yields it (:func:`frame`), copying its data (an array's buffer, say) straight
into the framed entry, which is then the whole gRPC message when it travels alone. Both halves concatenate,
because a repeated field's serialized entries simply follow each other. The hand-framed format is protobuf's
(field numbers from worker.proto):

    ToolChunkBatch = { 0x0a len ToolChunk }*
    ToolChunk      = [0x08 varint seq] [0x12 len data] [0x1a len content_type] [0x20 01 is_final]
                     { 0x2a len (0x0a len key 0x12 len value) }*      (metadata map entries)

Fields holding proto3 defaults (0, empty, false) are omitted, as protobuf does. A test parses the output with
the generated protobuf classes.

Decoding (:func:`decode_batch`, the Python client's deserializer) is the mirror image: batches of small chunks
are parsed by upb in one call, and a large chunk's data is a memoryview of the received message, so a NumPy
array decodes without copying it out of the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from . import codec
from .proto import pb

# A chunk as the server queues it: (seq, data, content_type, is_final, metadata or None), or a large chunk
# already framed as a batch entry (bytes, see frame())
Chunk = tuple[int, bytes, str, bool, "Mapping[str, str] | None"]

_SMALL = [bytes([n]) for n in range(128)]


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    if n < 1 << 21:  # call ids and chunk numbers: two or three bytes, without the loop
        if n < 1 << 14:
            return bytes((n & 0x7F | 0x80, n >> 7))
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
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
_JSON_CT = _CONTENT_TYPES[codec.JSON]


def frame_json(seq: int, data: bytes) -> bytes:
    """A JSON chunk that is not final and has no metadata (a stream's usual small chunk) as a batch entry, byte
    for byte what :func:`encode_batch` writes for its tuple (``data`` is never empty: JSON is at least one
    byte). Made in C by one bytes formatting: ~3x cheaper
    than the protobuf message encode_batch would add it to, and the entry is also the chunk's one copy."""
    size = varint(len(data))
    if seq:  # 0, protobuf's default, is not written
        number = varint(seq)
        entry = len(number) + len(size) + len(data) + 2 + len(_JSON_CT)
        return b"\x0a%b\x08%b\x12%b%b%b" % (varint(entry), number, size, data, _JSON_CT)
    entry = len(size) + len(data) + 1 + len(_JSON_CT)
    return b"\x0a%b\x12%b%b%b" % (varint(entry), size, data, _JSON_CT)


def encode_batch(chunks: Iterable[Chunk | bytes]) -> bytes:
    """The serialized ``ToolChunkBatch`` holding ``chunks`` (tuples, or entries made by :func:`frame`), in
    order. A batch of one framed entry is that entry, uncopied."""
    out: list[bytes] = []
    small = pb.ToolChunkBatch()
    add = small.chunks.add
    for chunk in chunks:
        if isinstance(chunk, bytes):
            framed = chunk
        else:
            seq, data, content_type, is_final, meta = chunk
            if len(data) < LARGE:
                # default-valued keywords cost upb ~0.3 µs a chunk: most chunks have neither
                if is_final or meta:
                    add(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)
                else:
                    add(seq=seq, data=data, content_type=content_type)
                continue
            framed = frame(seq, (data,), content_type, is_final, meta)
        if small.chunks:
            out.append(small.SerializeToString())
            small = pb.ToolChunkBatch()
            add = small.chunks.add
        out.append(framed)
    if small.chunks:
        out.append(small.SerializeToString())
    return out[0] if len(out) == 1 else b"".join(out)


def frame(
    seq: int,
    parts: Sequence[bytes | memoryview],
    content_type: str,
    is_final: bool,
    meta: Mapping[str, str] | None,
) -> bytes:
    """One batch entry holding a chunk whose data is the concatenation of ``parts``: the data is copied once,
    into the result."""
    return b"".join(entry_parts(seq, parts, content_type, is_final, meta))


def entry_parts(
    seq: int,
    parts: Sequence[bytes | memoryview],
    content_type: str,
    is_final: bool,
    meta: Mapping[str, str] | None,
) -> list[bytes | memoryview]:
    """The batch entry :func:`frame` makes, as its head, ``parts`` and its tail, unjoined: written with
    ``os.writev``, the data is not copied at all."""
    head = [b"\x08" + varint(seq)] if seq else []
    size = sum(len(p) for p in parts)
    head.append(b"\x12" + varint(size))
    tail = [_CONTENT_TYPES.get(content_type) or _field(b"\x1a", content_type.encode())] if content_type else []
    if is_final:
        tail.append(b"\x20\x01")
    if meta:
        tail.extend(_metadata(meta))
    size += sum(map(len, head)) + sum(map(len, tail))
    return [b"".join([b"\x0a", varint(size), *head]), *parts, b"".join(tail)]


def batch_parts(chunks: Iterable[Chunk | bytes]) -> list[bytes | memoryview]:
    """The serialized ``ToolChunkBatch`` of :func:`encode_batch`, as parts to write with ``os.writev``: a large
    chunk's data is one of them, uncopied (``encode_batch`` frames it, a copy)."""
    out: list[bytes | memoryview] = []
    small = pb.ToolChunkBatch()
    for chunk in chunks:
        if not isinstance(chunk, bytes) and len(chunk[1]) < LARGE:
            seq, data, content_type, is_final, meta = chunk
            if is_final or meta:
                small.chunks.add(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)
            else:
                small.chunks.add(seq=seq, data=data, content_type=content_type)
            continue
        if small.chunks:
            out.append(small.SerializeToString())
            small = pb.ToolChunkBatch()
        if isinstance(chunk, bytes):
            out.append(chunk)
        else:
            seq, data, content_type, is_final, meta = chunk
            out.extend(entry_parts(seq, (data,), content_type, is_final, meta))
    if small.chunks:
        out.append(small.SerializeToString())
    return out


# A stream's batch on the local link, as the frames that carry it: (first_seq, parts) is a JSON_CHUNKS frame,
# one JSON array text whose first element is chunk first_seq; (-1, parts) a MESSAGE holding a ToolChunkBatch
Segment = tuple[int, list[bytes | memoryview]]


def link_segments(chunks: Sequence[Chunk | bytes]) -> list[Segment]:
    """``chunks`` (queued without ``frame_large``: tuples) as the link's frames, in order: each run of plain
    JSON chunks with consecutive seqs (JSON, not final, no metadata) becomes one JSON array ``[v0,v1,...]``,
    the chunks' encoded JSON joined (each is one JSON text, as ``codec.encode_json`` made it: the array has
    exactly one element per chunk); any other chunk goes in a ``ToolChunkBatch`` as over gRPC. The array is
    smaller than the ToolChunkBatch of its chunks (1 byte per chunk against ~20), so no frame grows."""
    out: list[Segment] = []
    run: list[bytes] = []
    first = 0
    rest: list[Chunk | bytes] = []
    json = codec.JSON
    for chunk in chunks:
        # the usual chunk: one tuple index per field, no unpacking (this loop runs once per chunk)
        if type(chunk) is tuple and chunk[2] == json and not chunk[3] and chunk[4] is None:
            if run and chunk[0] == first + len(run):
                run.append(chunk[1])
                continue
            if run:
                out.append((first, [b"[" + b",".join(run) + b"]"]))
            elif rest:
                out.append((-1, batch_parts(rest)))
                rest = []
            first, run = chunk[0], [chunk[1]]
            continue
        if run:
            out.append((first, [b"[" + b",".join(run) + b"]"]))
            run = []
        rest.append(chunk)
    if run:
        out.append((first, [b"[" + b",".join(run) + b"]"]))
    elif rest:
        out.append((-1, batch_parts(rest)))
    return out


# -- decoding (the client side) -----------------------------------------------------------------------------

# A decoded chunk: (seq, data, content_type, is_final, metadata); data is bytes, or a memoryview of the message
# for a large chunk
Decoded = tuple[int, "bytes | memoryview", str, bool, dict[str, str]]


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def skip_field(buf: memoryview, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return read_varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = read_varint(buf, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _decode_large(entry: memoryview) -> Decoded:
    """A ToolChunk parsed by hand; its data is a view of ``entry``."""
    seq, data, content_type, is_final = 0, entry[:0], "", False
    meta: dict[str, str] = {}
    pos, end = 0, len(entry)
    while pos < end:
        key, pos = read_varint(entry, pos)
        field, wire_type = key >> 3, key & 7
        if field == 1 and wire_type == 0:
            seq, pos = read_varint(entry, pos)
        elif field == 2 and wire_type == 2:
            n, pos = read_varint(entry, pos)
            data, pos = entry[pos : pos + n], pos + n
        elif field == 3 and wire_type == 2:
            n, pos = read_varint(entry, pos)
            content_type, pos = str(entry[pos : pos + n], "utf-8"), pos + n
        elif field == 4 and wire_type == 0:
            flag, pos = read_varint(entry, pos)
            is_final = flag != 0
        elif field == 5 and wire_type == 2:
            n, pos = read_varint(entry, pos)
            pair = pb.ToolChunk.FromString(b"\x2a" + varint(n) + entry[pos : pos + n].tobytes()).metadata
            meta.update(pair)
            pos += n
        else:
            pos = skip_field(entry, pos, wire_type)
    if pos != end:
        raise ValueError("truncated ToolChunk")
    return seq, data, content_type, is_final, meta


def _small(message: bytes | memoryview) -> list[Decoded]:
    batch = pb.ToolChunkBatch.FromString(message)  # type: ignore[arg-type]  # upb reads any buffer
    return [(c.seq, c.data, c.content_type, c.is_final, dict(c.metadata)) for c in batch.chunks]


# after this many small entries in a row, the rest of a message goes to upb unexamined: walking entries in
# Python costs ~0.5 µs each, and a batch of thousands of small chunks must not pay it per chunk
_WALK_LIMIT = 64


def decode_batch(message: bytes) -> list[Decoded]:
    """The chunks of a serialized ``ToolChunkBatch``, in order. Runs of small chunks are parsed by upb in one
    call; the data of a large chunk stays a memoryview of ``message`` (no copy)."""
    if len(message) < LARGE:
        return _small(message)
    buf = memoryview(message)
    out: list[Decoded] = []
    pos, end = 0, len(buf)
    run, run_length = -1, 0  # where the current run of small entries began, and its length
    while pos < end:
        start = pos
        key, pos = read_varint(buf, pos)
        if key != 0x0A:
            pos = skip_field(buf, pos, key & 7)  # an unknown field of the batch
            continue
        n, pos = read_varint(buf, pos)
        if n < LARGE:
            if run < 0:
                run, run_length = start, 0
            run_length += 1
            if run_length >= _WALK_LIMIT:
                out.extend(_small(buf[run:]))
                return out
        else:
            if run >= 0:
                out.extend(_small(buf[run:start]))
                run = -1
            out.append(_decode_large(buf[pos : pos + n]))
        pos += n
    if pos != end:
        raise ValueError("truncated ToolChunkBatch")
    if run >= 0:
        out.extend(_small(buf[run:end]))
    return out
