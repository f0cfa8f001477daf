"""The SDK and codec on their own: decorator rules, payload encoding, the bounded buffer."""

from __future__ import annotations

import threading

import numpy as np
import pydantic
import pytest

from python_worker import BaseAdapter, tool
from python_worker.codec import (
    decode_json,
    decode_npy,
    decode_value,
    encode_json,
    encode_npy,
    encode_value,
    npy_parts,
)
from python_worker.server.buffer import Cancelled, ChunkBuffer


def test_generator_without_streaming_flag_is_refused() -> None:
    with pytest.raises(TypeError, match="is a generator: declare it with supports_streaming=True"):

        class Bad(BaseAdapter):
            @tool(supports_streaming=False)
            def gen(self):
                yield 1


def test_description_defaults_to_docstring_and_streaming_to_generator() -> None:
    class A(BaseAdapter):
        @tool
        def numbers(self, n: int = 3):
            """Count to n.

            More text."""
            yield from range(n)

    spec = A.tool_specs()["numbers"]
    assert spec.supports_streaming and spec.description == "Count to n."


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        np.array(2.5),
        np.zeros((0, 3), dtype=np.uint8),
        np.array([1 + 2j], dtype=np.complex64),
        np.arange(5, dtype=">i4"),
    ],
)
def test_npy_round_trip(array: np.ndarray) -> None:
    data = encode_npy(array)
    assert data.startswith(b"\x93NUMPY")
    back = decode_npy(data)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


def test_npy_is_readable_by_numpy_load(tmp_path) -> None:
    array = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    path = tmp_path / "a.npy"
    path.write_bytes(encode_npy(array))
    assert np.array_equal(np.load(path), array)


def test_npy_decode_is_a_view_and_checks_sizes() -> None:
    data = encode_npy(np.ones(1000, dtype=np.float64))
    assert not decode_npy(data).flags.owndata
    with pytest.raises(ValueError, match="needs 8000"):
        decode_npy(data[:-8])
    with pytest.raises(ValueError, match=r"not a valid \.npy payload"):
        decode_npy(b"hello")


def test_object_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="pickle"):
        encode_npy(np.array([object()]))


def test_json_integers_stay_exact_and_numpy_scalars_are_numbers() -> None:
    value = {"big": 2**100, "neg": -(2**70), "small": 3, "f": 0.1}
    assert decode_json(encode_json(value)) == value
    assert decode_json(encode_json({"x": np.float32(1.5), "n": np.int64(7)})) == {"x": 1.5, "n": 7}
    assert encode_json(float("nan")) == b"null"  # JSON has no NaN: documented


def test_values_pick_their_content_type() -> None:
    assert encode_value({"a": 1})[1] == "application/json"
    assert encode_value("text")[1] == "application/json"
    assert encode_value(b"\x00")[1] == "application/octet-stream"
    assert encode_value(np.zeros(2))[1] == "application/x-npy"
    assert encode_value("héllo", "text/plain; charset=utf-8") == ("héllo".encode(), "text/plain; charset=utf-8")
    assert decode_value(b"", "") is None
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_value(object())


def test_buffer_blocks_a_fast_producer_and_hands_over_batches() -> None:
    buffer = ChunkBuffer(max_chunks=10, max_bytes=1 << 20)
    produced = []

    def produce() -> None:
        try:
            for i in range(100):
                buffer.put(i, 1)
                produced.append(i)
            buffer.finish()
        except Cancelled:
            pass

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join(0.3)
    assert len(produced) == 10  # full: the producer waits
    taken = []
    while (batch := buffer.take(max_chunks=7, max_bytes=1 << 20)) is not None:
        assert len(batch) <= 7
        taken.extend(batch)
    thread.join(5)
    assert taken == list(range(100))


def test_buffer_respects_the_byte_budget_but_always_moves_one_item() -> None:
    buffer = ChunkBuffer(max_chunks=100, max_bytes=1 << 30)
    for i in range(3):
        buffer.put(i, 600)
    buffer.finish()
    assert buffer.take(100, 1000) == [0]
    assert buffer.take(100, 1200) == [1, 2]
    assert buffer.take(100, 1000) is None


def test_buffer_cancel_wakes_the_producer_and_errors_follow_the_data() -> None:
    buffer = ChunkBuffer(max_chunks=1)
    buffer.put("a", 1)
    woke = threading.Event()

    def produce() -> None:
        with pytest.raises(Cancelled):
            buffer.put("b", 1)
        woke.set()

    thread = threading.Thread(target=produce)
    thread.start()
    buffer.cancel()
    thread.join(5)
    assert woke.is_set()

    failing = ChunkBuffer()
    failing.put("x", 1)
    failing.finish(ValueError("boom"))
    assert failing.take(10, 100) == ["x"]
    with pytest.raises(ValueError, match="boom"):
        failing.take(10, 100)


def test_hand_encoded_batches_parse_as_protobuf() -> None:
    from python_worker.proto import pb
    from python_worker.server.wire import encode_batch

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
    from python_worker.proto import pb
    from python_worker.server.wire import LARGE, decode_batch, encode_batch, frame

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


class _Options(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    frequency_hz: float = 440.0


class _NestedAdapter(BaseAdapter):
    @tool
    def f(self, opts: _Options) -> None:
        pass


def test_unknown_nested_field_names_the_field() -> None:
    from python_worker.sdk.tool import ArgumentError

    with pytest.raises(ArgumentError) as info:
        _NestedAdapter.tool_specs()["f"].validate({"opts": {"freq": 1}})
    assert str(info.value) == "f: argument 'opts'['freq']: unknown field"
