"""Streaming through a real worker: one chunk per yield, in order, final chunks and their metadata."""

from __future__ import annotations

import numpy as np
import pytest

from python_worker.client import Client, KraitError

FINAL_KEYS = {"execution_time_ms", "tool_type", "worker_id"}


def test_one_chunk_per_yield_then_synthetic_final(client: Client) -> None:
    chunks = list(client.execute_stream("stream_progress", steps=3))
    assert [c.data for c in chunks[:3]] == [
        {"step": 1, "total": 3, "progress": pytest.approx(100 / 3)},
        {"step": 2, "total": 3, "progress": pytest.approx(200 / 3)},
        {"step": 3, "total": 3, "progress": 100.0},
    ]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert [c.is_final for c in chunks] == [False, False, False, True]
    final = chunks[-1]
    assert final.data is None and final.content_type == ""
    assert final.metadata["synthetic_final"] == "true"
    assert final.metadata["tool_type"] == "remote"
    assert final.metadata["worker_id"] == "test-worker"
    assert int(final.metadata["execution_time_ms"]) >= 0
    assert all(not c.metadata for c in chunks[:3])


def test_explicit_final_gets_metadata_and_no_synthetic_chunk(client: Client) -> None:
    chunks = list(client.execute_stream("stream_items", count=3))
    assert len(chunks) == 3
    assert [c.data["index"] for c in chunks] == [1, 2, 3]
    assert chunks[-1].is_final and not any(c.is_final for c in chunks[:-1])
    assert FINAL_KEYS <= chunks[-1].metadata.keys()
    assert "synthetic_final" not in chunks[-1].metadata
    assert chunks[-1].metadata["item"] == "3"  # the tool's own metadata survives


def test_empty_stream_is_just_a_synthetic_final(client: Client) -> None:
    chunks = list(client.execute_stream("stream_numbers", count=0))
    assert len(chunks) == 1 and chunks[0].is_final and chunks[0].metadata["synthetic_final"] == "true"


def test_many_small_chunks_keep_their_order(client: Client) -> None:
    chunks = list(client.execute_stream("stream_small", count=20_000))
    assert [c.data["i"] for c in chunks[:-1]] == list(range(20_000))
    assert [c.seq for c in chunks] == list(range(20_001))


def test_numpy_chunks_travel_as_npy(client: Client) -> None:
    chunks = list(client.execute_stream("stream_arrays", batches=3, batch_rows=256, cols=64))
    arrays = [c.data for c in chunks[:-1]]
    assert all(c.content_type == "application/x-npy" for c in chunks[:-1])
    assert [a.shape for a in arrays] == [(256, 64)] * 3
    assert all(a.dtype == np.float32 for a in arrays)
    assert [float(a[0, 0]) for a in arrays] == [0.0, 1.0, 2.0]


def test_large_arrays_span_several_messages(client: Client) -> None:
    # 4 MiB chunks are bigger than a batch's byte budget: each goes alone, intact
    chunks = list(client.execute_stream("stream_arrays", batches=3, batch_rows=1024, cols=1024))
    assert [c.data.nbytes for c in chunks[:-1]] == [4 << 20] * 3


def test_text_chunks(client: Client) -> None:
    chunks = list(client.execute_stream("stream_text", lines=2))
    assert [(c.data, c.content_type) for c in chunks[:-1]] == [
        ("line 1", "text/plain; charset=utf-8"),
        ("line 2", "text/plain; charset=utf-8"),
    ]


def test_progress_reports_arrive_in_order(client: Client) -> None:
    chunks = list(client.execute_stream("progress_demo", steps=2))
    kinds = [("progress" if c.is_progress else "data") for c in chunks[:-1]]
    assert kinds == ["progress", "data", "progress", "data"]
    assert chunks[0].data == {"progress": 1, "total": 2, "message": "step 1"}


def test_yield_after_final_fails_the_call(client: Client) -> None:
    with pytest.raises(KraitError) as info:
        list(client.execute_stream("yield_after_final"))
    assert info.value.code.name == "FAILED_PRECONDITION"
    assert "yielded after its final chunk" in info.value.message


def test_a_returned_dict_is_never_streamed_key_by_key(client: Client) -> None:
    with pytest.raises(KraitError) as info:
        list(client.execute_stream("returns_dict"))
    assert info.value.code.name == "FAILED_PRECONDITION"
    assert "returned dict, not an iterator" in info.value.message


def test_error_mid_stream_after_the_chunks_before_it(client: Client) -> None:
    received = []
    with pytest.raises(KraitError) as info:
        for chunk in client.execute_stream("failing_stream", fail_at=2):
            received.append(chunk.data)
    assert received == [{"step": 1}, {"step": 2}]
    assert info.value.type == "ValueError"
    assert str(info.value) == "ValueError: failed at step 3"
    assert 'in failing_stream\n    raise ValueError(f"failed at step {fail_at + 1}")' in info.value.traceback


def test_unary_tools_and_exact_json(client: Client) -> None:
    assert client.execute("add", a=1, b=2.5) == 3.5
    assert client.execute("greet", name="Ada") == "Hello, Ada!"
    assert client.execute("big_int", exponent=80) == 2**80
    assert client.execute("echo", value={"n": [1, 2**70, -(2**64)], "s": "ü"}) == {"n": [1, 2**70, -(2**64)], "s": "ü"}
    response = client.call_raw("add", {"a": 1, "b": 2})
    assert FINAL_KEYS <= response.metadata.keys()
    assert response.content_type == "application/json"


def test_binary_arguments_travel_beside_json(client: Client) -> None:
    values = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert client.execute("array_stats", values=values) == {"dtype": "int16", "shape": [3, 4], "sum": 66.0, "mean": 5.5}
    scaled = client.execute("scale_array", values=values.astype(np.float64), factor=0.5)
    assert isinstance(scaled, np.ndarray) and np.array_equal(scaled, values * 0.5)
    assert client.execute("reverse_bytes", blob=b"\x00\x01\xff") == b"\xff\x01\x00"
