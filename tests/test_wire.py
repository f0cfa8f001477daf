"""The hand-framed ToolChunkBatch encoding and its decoder: checked against the generated protobuf classes."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from python_worker.codec import decode_npy, npy_parts
from python_worker.proto import pb
from python_worker.wire import LARGE, batch_parts, decode_batch, encode_batch, entry_parts, frame, link_segments


def test_hand_encoded_batches_parse_as_protobuf() -> None:
    chunks = [
        (0, b'{"i":0}', "application/json", False, None),
        (1, b"", "", False, {"krait.event": "progress"}),
        (300, b"\x00" * 70_000, "application/x-npy", False, {"ü": "∑"}),
        (2**40, b"x", "text/custom", True, {"execution_time_ms": "12", "worker_id": "w"}),
    ]
    batch = pb.ToolChunkBatch.FromString(encode_batch(chunks))
    decoded = [(c.seq, c.data, c.content_type, c.is_final, dict(c.metadata) or None) for c in batch.chunks]
    assert decoded == chunks
    assert encode_batch([]) == b""


def test_batches_decode_with_large_payloads_as_views() -> None:
    array = np.arange(20_000, dtype=np.float32)
    small = [(i, b'{"i":%d}' % i, "application/json", False, None) for i in range(1, 100)]
    chunks = [
        (0, b"", "", False, {"krait.event": "progress"}),
        frame(7, npy_parts(array), "application/x-npy", False, {"offset": "0", "rows": "20000"}),
        (8, b"\x01" * LARGE, "application/octet-stream", True, {"ü": "∑"}),
        *small,  # more small entries in a row than are walked by hand
        frame(2**40, (b"x" * LARGE,), "text/custom", False, None),
    ]
    message = encode_batch(chunks)
    expected = [
        (c.seq, c.data, c.content_type, c.is_final, dict(c.metadata))
        for c in pb.ToolChunkBatch.FromString(message).chunks
    ]
    decoded = decode_batch(message)
    assert [(s, bytes(d), ct, f, m) for s, d, ct, f, m in decoded] == expected
    assert isinstance(decoded[1][1], memoryview) and isinstance(decoded[2][1], memoryview)
    assert decode_npy(decoded[1][1]).tolist() == array.tolist()
    # a large chunk alone is its own message, uncopied by the batch
    entry = frame(3, (b"y" * LARGE,), "application/octet-stream", False, None)
    assert encode_batch([entry]) is entry
    assert decode_batch(entry)[0][:3] == (3, memoryview(b"y" * LARGE), "application/octet-stream")
    assert decode_batch(encode_batch(small)) == [(s, d, ct, f, {}) for s, d, ct, f, _ in small]
    with pytest.raises(ValueError, match="truncated"):
        decode_batch(entry[:-1])


# -- the local link's JSON_CHUNKS form: runs of plain JSON chunks as one JSON array (wire.link_segments) -------


def _json(seq: int, value: object) -> tuple[int, bytes, str, bool, None]:
    return (seq, orjson.dumps(value), "application/json", False, None)


def _unfold(segments: list[tuple[int, list[bytes | memoryview]]]) -> list[tuple[str, int, object]]:
    """Each chunk the segments carry, in order: ("array", seq, value) or ("batch", seq, (data, ct, final, meta))."""
    out: list[tuple[str, int, object]] = []
    for first_seq, parts in segments:
        payload = b"".join(bytes(p) for p in parts)
        if first_seq >= 0:
            values = orjson.loads(payload)
            assert isinstance(values, list) and values
            out += [("array", first_seq + n, v) for n, v in enumerate(values)]
        else:
            for c in pb.ToolChunkBatch.FromString(payload).chunks:
                out.append(("batch", c.seq, (c.data, c.content_type, c.is_final, dict(c.metadata))))
    return out


def test_plain_json_chunks_become_one_array_numbered_from_its_first_seq() -> None:
    values: list[object] = [{"i": 0}, [1, "two"], "x", 3.5, None, True, {"nested": {"a": [1, 2]}}]
    chunks = [_json(seq, v) for seq, v in enumerate(values, start=40)]
    segments = link_segments(chunks)
    assert [(first, len(parts)) for first, parts in segments] == [(40, 1)]
    assert segments[0][1][0] == b"[" + b",".join(c[1] for c in chunks) + b"]"
    assert _unfold(segments) == [("array", seq, v) for seq, v in enumerate(values, start=40)]
    assert link_segments([_json(0, {"i": 0})])[0][0] == 0  # a stream's first chunk: first_seq 0


def test_other_chunks_split_the_runs_and_keep_their_form_and_order() -> None:
    big = b"\x01" * (LARGE + 5)
    chunks = [
        _json(0, {"i": 0}),
        _json(1, {"i": 1}),
        (2, b'{"p":1}', "application/json", False, {"krait.event": "progress"}),  # metadata
        _json(3, {"i": 3}),
        (4, b"raw", "application/octet-stream", False, None),  # binary
        (5, big, "application/octet-stream", False, None),  # large: written from its own buffer
        _json(6, {"i": 6}),
        _json(7, {"i": 7}),
        _json(9, {"i": 9}),  # not consecutive (never from the engine): a run of its own
        (10, b'{"done":1}', "application/json", True, {"worker_id": "w"}),  # final
    ]
    segments = link_segments(chunks)
    assert [first for first, _ in segments] == [0, -1, 3, -1, 6, 9, -1]
    assert any(part is big for part in segments[3][1])  # the large chunk's data, uncopied
    assert _unfold(segments) == [
        ("array", 0, {"i": 0}),
        ("array", 1, {"i": 1}),
        ("batch", 2, (b'{"p":1}', "application/json", False, {"krait.event": "progress"})),
        ("array", 3, {"i": 3}),
        ("batch", 4, (b"raw", "application/octet-stream", False, {})),
        ("batch", 5, (big, "application/octet-stream", False, {})),
        ("array", 6, {"i": 6}),
        ("array", 7, {"i": 7}),
        ("array", 9, {"i": 9}),
        ("batch", 10, (b'{"done":1}', "application/json", True, {"worker_id": "w"})),
    ]


def test_batch_parts_are_the_batch_encode_batch_writes() -> None:
    chunks: list[Any] = [
        (3, b"1", "application/json", False, None),
        (4, b"\x02" * (LARGE + 1), "application/x-npy", False, {"k": "v"}),
        (5, b"2", "application/json", True, {"worker_id": "w"}),
    ]
    assert b"".join(batch_parts(chunks)) == encode_batch(chunks)
    assert b"".join(entry_parts(4, (chunks[1][1],), "application/x-npy", False, {"k": "v"})) == frame(
        4, (chunks[1][1],), "application/x-npy", False, {"k": "v"}
    )
