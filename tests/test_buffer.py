"""ChunkBuffer, the bounded FIFO between a tool's thread and the gRPC thread sending its chunks."""

from __future__ import annotations

import threading

import pytest

from python_worker.server.buffer import Cancelled, ChunkBuffer

from .support import eventually


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
    eventually(lambda: buffer._producer_waiting, what="the producer blocking on a full buffer")
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
