"""The lean unary path keeps its guarantees: an inline call's long deadline, kept by the watchdog rather than
pushed on the deadlines' heap per call, still ends the call at its time (short ones are pushed at once); calls
counted in plain ints per thread scrape exactly as prometheus_client's own counter and histogram."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.rpc import code_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from python_worker import BaseAdapter, StreamChunk, ToolContext, tool
from python_worker.metrics import DURATION_BUCKETS, WorkerMetrics
from python_worker.proto import link_pb, pb
from python_worker.transports.link import WATCHED_DEADLINE_S, LinkServer
from python_worker.transports.link_io import END, MESSAGE, STARTED

from .link_support import InProcessLink

LinkFrame = link_pb.LinkFrame
Kind = LinkFrame.Kind


class _Waiter(BaseAdapter):
    @tool
    def quick(self, n: int = 0) -> int:
        return n

    @tool
    def wait(self, ctx: ToolContext, seconds: float) -> bool:
        return ctx.wait_cancelled(seconds)

    @tool
    def tagged(self, ctx: ToolContext) -> StreamChunk[str]:
        ctx.report_progress(1, 2)
        ctx.report_progress(2, 2, "done")
        # the tool's own keys are kept, except Krait's, which win (progress included)
        return StreamChunk(data="x", metadata={"k": "v", "tool_type": "mine", "worker_id": "", "progress": "?"})


class _Pool(InProcessLink):
    """A LinkServer serving ``_Waiter`` over two pipes, and the frames it writes back."""

    def __init__(self) -> None:
        super().__init__(_Waiter())


@pytest.fixture
def pool() -> Iterator[_Pool]:
    p = _Pool()
    yield p
    p.close()


def _no_deadlines_left(server: LinkServer) -> bool:
    """The heap holds no live deadline once the call's thread is done with it (its END may come a moment
    before: the inline call's thread cancels a deadline the watchdog pushed after writing it)."""
    until = time.monotonic() + 5
    while len(server._deadlines) and time.monotonic() < until:
        time.sleep(0.01)
    return len(server._deadlines) == 0


def _code(end: Any) -> int:
    return int(status_pb2.Status.FromString(end.payload).code) if end.payload else code_pb2.OK


def test_quick_inline_calls_with_long_deadlines_push_nothing_on_the_heap(pool: _Pool) -> None:
    for n in range(100):
        started, message, end = pool.call("quick", timeout_ms=30_000, n=n)
        assert [started.kind, message.kind, _code(end)] == [STARTED, MESSAGE, code_pb2.OK]
        assert pb.ExecuteToolResponse.FromString(message.payload).data == str(n).encode()
    # a call still running at a watchdog tick has its deadline pushed (then cancelled): a few at most
    assert len(pool.server._deadlines._heap) < 20
    assert _no_deadlines_left(pool.server)


@pytest.mark.parametrize("timeout_ms", [int(WATCHED_DEADLINE_S * 1000) + 200, 300])
def test_an_inline_calls_deadline_ends_it_long_or_short(pool: _Pool, timeout_ms: int) -> None:
    """A long deadline is pushed by the watchdog once the call outlives a tick, a short one at once: either
    way the tool sees its cancellation and the call ends DEADLINE_EXCEEDED (well before the tool's 30 s)."""
    pool.call("quick", timeout_ms=30_000)  # the watchdog awake, as in a pool's steady state
    frames = pool.call("wait", timeout_ms=timeout_ms, wait_s=15, seconds=30)
    assert [f.kind for f in frames] == [STARTED, END]
    assert _code(frames[-1]) == code_pb2.DEADLINE_EXCEEDED
    assert _no_deadlines_left(pool.server)


def test_a_deadline_the_watchdog_pushed_is_cancelled_when_its_call_ends(pool: _Pool) -> None:
    frames = pool.call("wait", timeout_ms=60_000, seconds=0.1)  # outlives a tick: its deadline is pushed
    assert _code(frames[-1]) == code_pb2.OK
    assert _no_deadlines_left(pool.server)


def test_a_unary_results_metadata_is_the_tools_own_under_krait_keys(pool: _Pool) -> None:
    _, message, end = pool.call("tagged", timeout_ms=30_000)
    assert _code(end) == code_pb2.OK
    meta = dict(pb.ExecuteToolResponse.FromString(message.payload).metadata)
    assert meta["execution_time_ms"].isdigit()
    del meta["execution_time_ms"]
    assert meta == {
        "k": "v",
        "tool_type": "remote",
        "worker_id": "w",
        "progress": json.dumps({"progress": 2, "total": 2, "message": "done"}, separators=(",", ":")),
    }


# -- metrics: plain ints per thread, summed at scrape ---------------------------------------------------------

# exact binary fractions (sums equal whatever the order of addition), in every bucket from the first to +Inf
_SECONDS = (0.0009765625, 0.001, 0.0078125, 0.25, 0.5, 2.5, 100.0)


def _call_lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "krait_tool_calls" in line or "krait_tool_duration" in line]


def test_calls_counted_on_many_threads_scrape_as_prometheus_clients_own_families() -> None:
    """The exposition of the calls and duration families is line for line what prometheus_client's Counter and
    Histogram write for the same calls, whichever threads ended them (live ones, and ones that have ended)."""
    metrics = WorkerMetrics(CollectorRegistry())
    reference = CollectorRegistry()
    calls = Counter("krait_tool_calls", "Tool calls ended, by tool and gRPC status code name", ["tool", "status"],
                    registry=reference)  # fmt: skip
    duration = Histogram(
        "krait_tool_duration_seconds",
        "Tool call duration, from the request's arrival to the call's end",
        ["tool"],
        buckets=DURATION_BUCKETS,
        registry=reference,
    )

    def end_calls(tool: str, status: str) -> None:
        for seconds in _SECONDS:
            metrics.call_ended(tool, status, seconds)

    assert _call_lines(metrics.registry) == _call_lines(reference)  # nothing counted yet: the same headers
    work = [("add", "OK"), ("add", "OK"), ("add", "CANCELLED"), ("other", "OK"), ("add", "OK")]
    for name, status in work[:-1]:
        thread = threading.Thread(target=end_calls, args=(name, status))
        thread.start()
        thread.join()
    end_calls(*work[-1])  # and this thread, alive
    for name, status in work:
        for seconds in _SECONDS:
            calls.labels(name, status).inc()
            duration.labels(name).observe(seconds)
    assert _call_lines(metrics.registry) == _call_lines(reference)
    assert metrics.registry.get_sample_value("krait_tool_calls_total", {"tool": "add", "status": "OK"}) == 21


def test_the_tallies_of_ended_threads_are_folded_into_one() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    for _ in range(50):
        thread = threading.Thread(target=metrics.call_ended, args=("add", "OK", 0.001))
        thread.start()
        thread.join()
    assert len(metrics._tallies) <= 1  # memory bound: one tally per live thread
    assert metrics.registry.get_sample_value("krait_tool_calls_total", {"tool": "add", "status": "OK"}) == 50
    assert metrics.registry.get_sample_value("krait_tool_duration_seconds_count", {"tool": "add"}) == 50


class _Asker(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.second_entered, self.first_left = threading.Event(), threading.Event()

    @tool
    def ask(self, ctx: ToolContext) -> Any:
        self.calls += 1
        if self.calls == 2:  # runs while the first call's thread is still in its inline bookkeeping
            self.second_entered.set()
            self.first_left.wait(10)  # ... which it leaves now, before this call waits for its handler
        return ctx.call("h", {})


def test_an_inline_call_waiting_for_a_handler_hands_its_reading_over_while_the_call_before_it_ends() -> None:
    """Call 1 (inline) hands its reading over while it waits for its handler; once its reply is written, the new
    reader serves call 2 inline before call 1's thread has left its inline bookkeeping, and call 1 leaves it while
    call 2 runs. Call 2 then waits for its own handler: its reading must be handed over too (call 1's end must not
    clear call 2's state, nor its hand-over count for call 2), else nobody reads the reply and the worker hangs."""
    adapter = _Asker()
    link = InProcessLink(adapter)
    server = link.server
    serve_tool, serve_inline = server._serve_tool, server._serve_inline

    def held_after_serving(call: Any, frame: Any, *, inline: bool = False) -> None:
        serve_tool(call, frame, inline=inline)
        if call.call_id == 1:  # answered and out of the call table, not yet out of the inline bookkeeping
            adapter.second_entered.wait(10)

    def noted_leaving(call: Any) -> bool:
        try:
            return serve_inline(call)
        finally:
            if call.call_id == 1:
                adapter.first_left.set()

    server._serve_tool = held_after_serving  # type: ignore[method-assign]
    server._serve_inline = noted_leaving  # type: ignore[method-assign]

    def ask(value: bytes) -> Any:
        request = pb.ExecuteToolRequest(tool_name="ask", args_json="{}").SerializeToString()
        call_id = link.open(LinkFrame(kind=Kind.OPEN, method="ExecuteTool", payload=request, timeout_ms=30_000))
        frames = [link.frames.get(timeout=10) for _ in range(2)]
        assert [f.kind for f in frames] == [Kind.STARTED, Kind.HANDLER_CALL]
        asked = pb.HandlerCall.FromString(frames[1].payload)
        reply = pb.HandlerReply(id=asked.id, data=value).SerializeToString()
        link.send(LinkFrame(call_id=call_id, kind=Kind.HANDLER_REPLY, payload=reply))
        frames = [link.frames.get(timeout=10)]
        while frames[-1].kind != Kind.END:
            frames.append(link.frames.get(timeout=10))
        assert frames[-1].payload == b"" or status_pb2.Status.FromString(frames[-1].payload).code == 0
        return json.loads(pb.ExecuteToolResponse.FromString(frames[0].payload).data)

    try:
        assert ask(b"1") == 1
        assert ask(b"2") == 2  # with the bug: no END (nobody reads the reply), queue.Empty after 10 s
        assert adapter.first_left.is_set()
    finally:
        adapter.second_entered.set()
        adapter.first_left.set()
        link.close()
