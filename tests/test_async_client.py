"""The asyncio client (``python_worker.client.AsyncClient``, on grpc.aio) against a real showcase worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from python_worker.client import (
    AsyncClient,
    DeadlineExceededError,
    InvalidArgumentsError,
    KraitError,
    ToolError,
)

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop, bounded by ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def _events(client: AsyncClient, tag: str, key: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        events: dict[str, Any] = await client.execute("stream_events", tag=tag)
        if key in events:
            return events
        assert time.monotonic() < deadline, f"{tag}: no {key!r} event, got {events}"
        await asyncio.sleep(0.02)


def test_unary_calls_and_binary_arguments(worker) -> None:
    async def main() -> None:
        async with AsyncClient(worker.target, timeout=20) as client:
            assert await client.execute("add", a=1, b=2) == 3
            assert await client.execute("big_int", exponent=70) == 2**70
            scaled = await client.execute("scale_array", values=np.arange(4, dtype=np.float32), factor=3)
            assert scaled.dtype == np.float32 and scaled.tolist() == [0, 3, 6, 9]
            assert (await client.ping("hi")).message == "hi"
            assert "add" in {t.name for t in await client.list_tools()}
            session = client.session("async-s1")
            assert (await session.execute("session_counter"))["count"] == 1
            assert (await session.execute("session_counter"))["count"] == 2
            assert await client.cleanup_session("async-s1")

    run(main())


def test_streams_are_async_iterators(worker) -> None:
    async def main() -> None:
        async with AsyncClient(worker.target, timeout=20) as client:
            chunks = [c async for c in client.execute_stream("stream_progress", steps=3)]
            assert [c.data["step"] for c in chunks[:-1]] == [1, 2, 3]
            assert chunks[-1].is_final and chunks[-1].metadata["synthetic_final"] == "true"
            arrays = [c.data async for c in client.execute_stream("stream_arrays", batches=2, batch_rows=64, cols=8)]
            assert [a.shape for a in arrays[:-1]] == [(64, 8), (64, 8)]

    run(main())


def test_leaving_a_stream_cancels_the_call(worker) -> None:
    async def main() -> None:
        async with AsyncClient(worker.target, timeout=20) as client:
            async for chunk in client.execute_stream("endless_stream", tag="aio-break", interval_ms=1000):
                assert chunk.data == {"tick": 0}
                break
            events = await _events(client, "aio-break", "finally")
            assert "cancel_seen" in events

            async with client.execute_stream("endless_stream", tag="aio-with", interval_ms=1000) as stream:
                await anext(stream)
            await _events(client, "aio-with", "finally")

    run(main())


def test_errors_are_translated(worker) -> None:
    async def main() -> None:
        async with AsyncClient(worker.target, timeout=20) as client:
            with pytest.raises(ToolError) as info:
                await client.execute("fail", message="nope")
            assert info.value.type == "ValueError" and "in fail" in info.value.traceback
            with pytest.raises(InvalidArgumentsError, match="argument 'b'"):
                await client.execute("add", a=1, b="2")
            with pytest.raises(KraitError) as failing:
                [c async for c in client.execute_stream("failing_stream", fail_at=2)]
            assert failing.value.code == grpc.StatusCode.UNKNOWN and "failed at step 3" in failing.value.message
            with pytest.raises(DeadlineExceededError):
                await client.call("slow_tool", {"seconds": 30, "tag": "aio-deadline"}, timeout=0.3)
            await _events(client, "aio-deadline", "cancel_seen")

    run(main())
