"""The local link's hand-framed frames parse with the generated classes, and the reader reads what a pool
writes (length-prefixed LinkFrames) from a real pipe."""

from __future__ import annotations

import os
import struct
import threading

from python_worker.proto import link_pb
from python_worker.transports.link_io import (
    END,
    JSON_CHUNKS,
    LOG,
    MESSAGE,
    READY,
    FrameReader,
    FrameWriter,
    send_segments,
)


def _frames(data: bytes) -> list[object]:
    out = []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        out.append(link_pb.LinkFrame.FromString(data[4 : 4 + size]))
        data = data[4 + size :]
    return out


def _written(send: object) -> bytes:
    """What ``send(writer)`` writes into a real pipe (read meanwhile: a pipe holds only 64 KiB)."""
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(read_end, 1 << 20):
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    send(FrameWriter(write_end))  # type: ignore[operator]
    os.close(write_end)
    reader.join(10)
    os.close(read_end)
    return b"".join(chunks)


def test_frames_to_the_pool_parse_with_the_generated_classes() -> None:
    big = os.urandom(3 << 20)
    data = _written(
        lambda w: (
            w.send_parts([(7, MESSAGE, b"response"), (7, END, b"")]),
            w.send(300, MESSAGE, memoryview(big)),
            w.send(0, READY, b"info", metadata={"grpc_port": "50051"}),
            w.send(0, LOG, b""),
        )
    )
    message, end, large, ready, log = _frames(data)
    assert (message.call_id, message.kind, message.payload) == (7, MESSAGE, b"response")
    assert (end.call_id, end.kind, end.payload) == (7, END, b"")
    assert (large.call_id, large.kind, large.payload == big) == (300, MESSAGE, True)
    assert (ready.kind, ready.payload, dict(ready.metadata)) == (READY, b"info", {"grpc_port": "50051"})
    assert (log.call_id, log.kind) == (0, LOG)


def test_the_reader_reads_frames_and_sees_the_end() -> None:
    read_end, write_end = os.pipe()
    frames = [
        link_pb.LinkFrame(call_id=n, kind=link_pb.LinkFrame.OPEN, method="Ping", payload=os.urandom(n * 1000))
        for n in range(1, 100)
    ]

    def pool() -> None:  # writes in odd pieces, as a pipe may deliver them
        data = b"".join(struct.pack(">I", f.ByteSize()) + f.SerializeToString() for f in frames)
        for start in range(0, len(data), 777):
            os.write(write_end, data[start : start + 777])
        os.close(write_end)

    thread = threading.Thread(target=pool)
    thread.start()
    reader = FrameReader(read_end)
    got = []
    while (frame := reader.read()) is not None:
        got.append(frame)
    thread.join(10)
    os.close(read_end)
    assert got == frames


def test_large_input_frames_are_read_without_copies_and_fall_back_to_protobuf() -> None:
    import os
    import threading

    from python_worker.proto import pb
    from python_worker.transports.link_io import LARGE_INPUT, FrameReader, InputFrame

    items = [pb.InputItem(data=os.urandom(LARGE_INPUT), content_type="application/octet-stream"), pb.InputItem()]
    batch = pb.InputBatch(items=items).SerializeToString()
    frames = [
        link_pb.LinkFrame(call_id=300, kind=link_pb.LinkFrame.INPUT, payload=batch),
        # large, but not an INPUT frame: protobuf reads it
        link_pb.LinkFrame(call_id=301, kind=link_pb.LinkFrame.HANDLER_REPLY, payload=batch),
    ]
    read_end, write_end = os.pipe()
    data = b"".join(len(f.SerializeToString()).to_bytes(4, "big") + f.SerializeToString() for f in frames)

    def write() -> None:  # more than a pipe holds: written while the reader reads
        with os.fdopen(write_end, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    reader = FrameReader(read_end)
    first, second = reader.read(), reader.read()
    writer.join(10)
    os.close(read_end)
    assert isinstance(first, InputFrame) and first.call_id == 300 and first.kind == link_pb.LinkFrame.INPUT
    assert [(bytes(i.data), i.content_type) for i in first.items] == [(i.data, i.content_type) for i in items]
    assert isinstance(first.items[0].data, memoryview)  # a view into the frame read from the pipe
    assert not isinstance(second, InputFrame) and second.call_id == 301 and second.payload == batch


def test_a_batchs_segments_are_json_chunks_and_message_frames_in_one_write() -> None:
    """send_segments: a JSON_CHUNKS frame per array (first_seq, 0 included, read back by protobuf), a MESSAGE per
    ToolChunkBatch, their payloads the concatenation of their parts, in order."""
    big = b"\x07" * 100_000
    segments: list[tuple[int, list[bytes | memoryview]]] = [
        (0, [b'[{"i":0},{"i":1}]']),
        (-1, [b"\x0a\x03abc", memoryview(big), b"tail"]),
        (300, [b"[1,2,3]"]),
    ]
    frames = _frames(_written(lambda w: send_segments(w, 77, segments)))
    assert [(f.call_id, f.kind, f.first_seq, f.payload) for f in frames] == [  # type: ignore[attr-defined]
        (77, JSON_CHUNKS, 0, b'[{"i":0},{"i":1}]'),
        (77, MESSAGE, 0, b"\x0a\x03abc" + big + b"tail"),
        (77, JSON_CHUNKS, 300, b"[1,2,3]"),
    ]
