"""Cancellation, disconnects and deadlines reach the tool: its flag is raised, its generator closed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from python_worker.client import Client, DeadlineExceededError

from .support import eventually
from .workers import ROOT

# Bounds here prove "promptly, not eventually"; the latency targets themselves are measured in scripts/bench.
PROMPT = 2.0


def _events(client: Client, tag: str, wait_for: str, timeout: float = 5.0) -> dict[str, float]:
    def seen() -> dict[str, float]:
        events = client.execute("stream_events", tag=tag)
        assert wait_for in events, f"{tag}: no {wait_for!r} event, got {events}"
        return events

    return eventually(seen, timeout=timeout)


@pytest.mark.parametrize("tool", ["endless_stream", "blocking_stream"])
def test_client_cancel_closes_the_generator(client: Client, tool: str) -> None:
    tag = f"cancel-{tool}"
    args = {"tag": tag, "interval_ms": 1000} if tool == "endless_stream" else {"tag": tag, "seconds": 60}
    stream = client.stream(tool, args)
    next(stream)
    cancelled_at = time.time()
    stream.close()
    events = _events(client, tag, "finally")
    assert "cancel_seen" in events  # the flag woke the tool while it was blocked between yields
    assert events["finally"] - cancelled_at < PROMPT
    assert client.execute("add", a=1, b=1) == 2  # the worker is free for the next call


def test_fast_producer_is_closed_at_its_next_yield(client: Client) -> None:
    stream = client.stream("endless_stream", {"tag": "fast", "interval_ms": 0})
    for _ in range(10):
        next(stream)
    stream.close()
    events = _events(client, "fast", "finally")
    assert "cancel_seen" not in events  # never blocked: closed by GeneratorExit at a yield


def test_slow_consumer_pauses_the_generator(client: Client) -> None:
    def ticks() -> int:
        return client.execute("stream_events", tag="paused")["ticks"]

    stream = client.stream("endless_stream", {"tag": "paused", "interval_ms": 0})
    next(stream)
    # the producer fills the bounded buffer and the transport's windows, then must stop: two readings half a
    # second apart agree
    last = [-1]

    def paused() -> int | None:
        previous, last[0] = last[0], ticks()
        return last[0] if last[0] == previous else None

    current = eventually(paused, timeout=20, interval=0.5, what="the generator pausing")
    assert current < 200_000  # paused on a bounded buffer, not producing into unbounded memory
    for _ in range(current):  # draining what was produced lets it go on
        next(stream)
    stream.close()
    assert ticks() > current


def test_deadline_cancels_a_stream(client: Client) -> None:
    started = time.time()
    with pytest.raises(DeadlineExceededError):
        list(client.stream("endless_stream", {"tag": "deadline", "interval_ms": 100}, timeout=0.5))
    events = _events(client, "deadline", "finally")
    # the flag wakes the tool in ctx.sleep (cancel_seen), or, when the deadline finds it handing over a chunk,
    # the generator is closed at that yield: either way it stops promptly at the deadline
    stopped = events.get("cancel_seen", events["finally"])
    assert 0.4 < stopped - started < 0.5 + PROMPT


def test_deadline_cancels_a_unary_tool(client: Client) -> None:
    started = time.time()
    with pytest.raises(DeadlineExceededError) as info:
        client.call("slow_tool", {"seconds": 30, "tag": "unary-deadline"}, timeout=0.5)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    events = _events(client, "unary-deadline", "cancel_seen")
    assert events["cancel_seen"] - started < 0.5 + PROMPT


def test_client_process_killed_mid_stream(worker, client: Client) -> None:
    script = textwrap.dedent(
        f"""
        from python_worker.client import Client
        stream = Client({worker.target!r}).execute_stream("endless_stream", tag="killed", interval_ms=1000)
        next(stream)
        print("streaming", flush=True)
        import time; time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"streaming\n"
        killed_at = time.time()
        proc.kill()
    finally:
        proc.wait(10)
    events = _events(client, "killed", "finally")
    assert events["finally"] - killed_at < PROMPT
