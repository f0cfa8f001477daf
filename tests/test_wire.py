"""The hand-framed ToolChunkBatch encoding and its decoder: checked against the generated protobuf classes."""

from __future__ import annotations

import numpy as np
import pytest

from python_worker.codec import decode_npy, npy_parts
from python_worker.proto import pb
from python_worker.server.wire import LARGE, decode_batch, encode_batch, frame


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
