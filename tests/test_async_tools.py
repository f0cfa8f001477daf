"""Async tools through a real worker: ``async def`` and async generators on the worker's event loop, their
cancellation, deadlines, backpressure, concurrency, and definition errors caught at import."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from python_worker import BaseAdapter, tool
from python_worker.client import Client, DeadlineExceededError, KraitError, ToolError, build_request

from .support import insecure_channel
from .workers import ROOT, Worker, running_worker

MODERN = "tests.fixtures.modern:ModernAdapter"
MAX_CALLS = 4


@pytest.fixture(scope="module")
def modern() -> Iterator[Worker]:
    with running_worker(MODERN, "--max-calls", str(MAX_CALLS)) as worker:
        yield worker


@pytest.fixture
def client(modern: Worker) -> Iterator[Client]:
    with Client(modern.target, timeout=30) as c:
        yield c


def eventually(check: Any, timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _events(client: Client, tag: str, *keys: str) -> dict[str, Any]:
    """What the tools recorded under ``tag``, once it has every key in ``keys``."""

    def check() -> dict[str, Any] | None:
        try:
            events: dict[str, Any] = client.execute("events", tag=tag)
        except KraitError as error:  # every slot still taken by calls being cancelled
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return None
        return events if all(k in events for k in keys) else None

    return eventually(check)


def test_async_unary_tool(client: Client) -> None:
    assert client.execute("add", a=1, b=2.5) == 3.5
    with pytest.raises(KraitError, match="argument 'a': Input should be a valid number"):
        client.execute("add", a="1", b=2)


def test_async_generator_streams_with_an_explicit_final(client: Client) -> None:
    chunks = list(client.execute_stream("ticks", count=3))
    assert [c.data for c in chunks] == [{"tick": 0}, {"tick": 1}, {"tick": 2}, {"tick": 3}]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert chunks[-1].is_final and chunks[-1].metadata["ticks"] == "3" and "execution_time_ms" in chunks[-1].metadata


def test_async_progress_keeps_its_place_in_the_stream(client: Client) -> None:
    chunks = list(client.execute_stream("progress", steps=2))
    assert [(c.is_progress, c.data if not c.is_progress else c.data["progress"]) for c in chunks[:-1]] == [
        (True, 1),
        (False, 0),
        (True, 2),
        (False, 1),
    ]
    assert [c.seq for c in chunks] == list(range(5))


def test_cancel_mid_stream_raises_cancelled_error_in_the_tool(client: Client) -> None:
    # between yields, awaiting asyncio.sleep: cancellation reaches it as CancelledError, its finally runs
    stream = client.stream("ticks", {"tag": "cancel-await", "interval_ms": 60_000})
    assert next(stream).data == {"tick": 0}
    stream.close()
    events = _events(client, "cancel-await", "finally")
    assert "cancelled" in events and "closed_at_yield" not in events


def test_cancel_of_a_paused_generator_closes_it_at_its_yield(client: Client) -> None:
    # a fast producer fills the buffer and waits at its yield: cancellation closes it there
    stream = client.stream("ticks", {"tag": "cancel-yield"})
    for _ in range(10):
        next(stream)
    eventually(lambda: _paused(client, "cancel-yield"))
    stream.close()
    events = _events(client, "cancel-yield", "finally")
    assert "closed_at_yield" in events and "cancelled" not in events
    assert client.execute("add", a=1, b=1) == 2  # the slot is free again


def _paused(client: Client, tag: str) -> bool:
    before = client.execute("events", tag=tag).get("ticks")
    time.sleep(0.3)
    return before is not None and before == client.execute("events", tag=tag).get("ticks")


def test_slow_consumer_pauses_an_async_generator(client: Client) -> None:
    stream = client.stream("ticks", {"tag": "paused"})
    next(stream)
    eventually(lambda: _paused(client, "paused"), timeout=20)
    ticks = client.execute("events", tag="paused")["ticks"]
    assert ticks < 200_000  # paused on the bounded buffer, not producing into unbounded memory
    for _ in range(ticks):  # draining lets it go on
        next(stream)
    eventually(lambda: client.execute("events", tag="paused")["ticks"] > ticks)
    stream.close()
    _events(client, "paused", "finally")


def test_deadline_cancels_an_async_tool(client: Client) -> None:
    with pytest.raises(DeadlineExceededError):
        client.call("wait", {"seconds": 60, "tag": "deadline"}, timeout=0.5)
    events = _events(client, "deadline", "finally")
    assert "cancelled" in events


def test_async_tools_run_concurrently_up_to_max_calls(modern: Worker, client: Client) -> None:
    # each call returns only once MAX_CALLS of them run at the same time
    with concurrent.futures.ThreadPoolExecutor(MAX_CALLS) as pool:
        calls = [pool.submit(client.execute, "gather", tag="together", n=MAX_CALLS) for _ in range(MAX_CALLS)]
        assert sorted(f.result(timeout=20) for f in calls) == [MAX_CALLS] * MAX_CALLS

    # with every slot taken by an async call, one more is refused, not queued
    with insecure_channel(modern.target) as channel:
        execute = channel.unary_unary(
            "/krait.v1.ToolWorker/ExecuteTool", request_serializer=lambda r: r.SerializeToString()
        )
        waits: dict[int, Any] = {}

        def fill() -> bool:
            # a slot is freed just after its call's response: a wait refused meanwhile is sent again
            for i in range(MAX_CALLS):
                call = waits.get(i)
                if call is None or (call.done() and call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED):
                    request = build_request("wait", {"seconds": 60, "tag": f"slot{i}"}, "", None)
                    waits[i] = execute.future(request, timeout=30)
            return all(not call.done() for call in waits.values()) and _refused(client)

        eventually(fill)
        for call in waits.values():
            call.cancel()
        for i in range(MAX_CALLS):
            assert "cancelled" in _events(client, f"slot{i}", "finally")
    eventually(lambda: _answers(client))


def _refused(client: Client) -> bool:
    try:
        client.execute("add", a=1, b=2)
    except KraitError as error:
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return True
    return False


def _answers(client: Client) -> bool:
    try:
        return client.execute("add", a=1, b=2) == 3
    except KraitError:
        return False  # a slot not yet released


def test_a_blocking_sync_tool_does_not_stall_async_tools(client: Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(client.execute, "block", seconds=3, tag="blocking")
        _events(client, "blocking", "started")
        for _ in range(5):
            assert client.execute("add", a=2, b=2) == 4
        assert not blocked.done()  # the async calls finished while the sync tool still blocked its thread
        assert blocked.result(timeout=20) == 3


def test_async_exception_traceback_starts_at_the_tool(client: Client) -> None:
    with pytest.raises(ToolError) as info:
        client.execute("async_fail", retry_after=1.5)
    error = info.value
    assert error.type == "QuotaExceeded" and error.details == {"retry_after": 1.5, "limit": 100}
    assert "in async_fail" in error.traceback
    assert "concurrent/futures" not in error.traceback and "aio_runner" not in error.traceback


# -- definition errors, at import ---------------------------------------------------------------------------


def test_async_def_marked_streaming_is_refused() -> None:
    with pytest.raises(TypeError, match=r"tool .*Bad\.f is an async def without yield"):

        class Bad(BaseAdapter):
            @tool(supports_streaming=True)
            async def f(self) -> int:
                return 1


def test_async_generator_marked_unary_is_refused() -> None:
    with pytest.raises(TypeError, match=r"tool .*Bad\.f is a generator"):

        class Bad(BaseAdapter):
            @tool(supports_streaming=False)
            async def f(self):  # type: ignore[no-untyped-def]
                yield 1


def test_plain_def_marked_streaming_must_return_an_iterator() -> None:
    with pytest.raises(TypeError, match=r"tool .*Bad\.f streams, but is annotated to return dict"):

        class Bad(BaseAdapter):
            @tool(supports_streaming=True)
            def f(self) -> dict[str, int]:
                return {}

    with pytest.raises(TypeError, match=r"tool .*Bad2\.f is a plain def marked streaming"):

        class Bad2(BaseAdapter):
            @tool(supports_streaming=True)
            def f(self) -> AsyncIterator[int]:
                return _agen()

    class Fine(BaseAdapter):
        @tool(supports_streaming=True)
        def f(self) -> Iterator[int]:
            return iter([1])

    assert Fine.tool_specs()["f"].supports_streaming


class _Opaque:
    pass


async def _agen() -> AsyncIterator[int]:
    yield 1


def test_unsupported_hints_name_the_tool_and_parameter() -> None:
    with pytest.raises(TypeError, match=r"tool .*Bad\.f: parameter 'thing' has an unsupported type hint"):

        class Bad(BaseAdapter):
            @tool
            def f(self, thing: _Opaque) -> None:
                pass

    with pytest.raises(TypeError, match=r"tool .*Bad2\.f: the result type _Opaque has no JSON form"):

        class Bad2(BaseAdapter):
            @tool
            def f(self) -> _Opaque:
                return _Opaque()


def test_a_bad_tool_stops_the_worker_at_start_naming_the_tool(tmp_path) -> None:
    (tmp_path / "broken_tools.py").write_text(
        textwrap.dedent(
            """
            from python_worker import BaseAdapter, tool

            class Broken(BaseAdapter):
                @tool(supports_streaming=True)
                async def fetch(self, url: str) -> str:
                    return url
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "python_worker", "serve", "--adapter", "broken_tools:Broken", "--port", "0"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "tool Broken.fetch is an async def without yield" in result.stderr
