"""A call past its deadline says so in one text on every client, naming the deadline (the Elixir pool's words
too: elixir_client/test/krait/call/deadline_text_test.exs), whichever side noticed the deadline first."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from python_worker.aio_client import AsyncClient
from python_worker.client import Client, DeadlineExceededError
from python_worker.errors import deadline_message

from .workers import Worker


def test_the_text_names_the_deadline_in_ms() -> None:
    assert deadline_message(1.0) == "the call did not finish within its deadline of 1000 ms"
    assert deadline_message(0.25) == "the call did not finish within its deadline of 250 ms"
    assert deadline_message(0.0015) == "the call did not finish within its deadline of 1.5 ms"
    assert deadline_message(None) == "the call did not finish within its deadline"


def test_sync_unary_and_stream(worker: Worker) -> None:
    with Client(worker.target, timeout=0.4) as client:
        with pytest.raises(DeadlineExceededError) as unary:
            client.call("slow_tool", {"seconds": 30, "tag": "text-unary"}, timeout=0.3)
        assert unary.value.message == str(unary.value) == deadline_message(0.3)
        assert unary.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # the client's default timeout is the one named when the call gave none
        with pytest.raises(DeadlineExceededError) as stream:
            list(client.stream("endless_stream", {"tag": "text-stream", "interval_ms": 50}))
        assert stream.value.message == deadline_message(0.4)


def test_async_unary_and_stream(worker: Worker) -> None:
    async def main() -> None:
        async with AsyncClient(worker.target, timeout=0.4) as client:
            with pytest.raises(DeadlineExceededError) as unary:
                await client.call("slow_tool", {"seconds": 30, "tag": "text-aio-unary"}, timeout=0.3)
            assert unary.value.message == deadline_message(0.3)
            with pytest.raises(DeadlineExceededError) as stream:
                async for _ in client.stream("endless_stream", {"tag": "text-aio-stream", "interval_ms": 50}):
                    pass
            assert stream.value.message == deadline_message(0.4)

    asyncio.run(asyncio.wait_for(main(), 30))
