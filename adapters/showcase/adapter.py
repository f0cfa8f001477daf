"""ShowcaseAdapter: progress, numbers, items with an explicit final, failures, endless and slow streams,
binary arguments, sessions, and a few unary tools.

Chunk schemas:
- ``stream_progress``: ``{"step": int, "total": int, "progress": float}`` (progress in percent)
- ``stream_numbers``: ``{"number": int, "is_last": bool}``
- ``stream_items``: ``{"index": int, "value": str}``; the last item is the explicit final chunk
- ``endless_stream``: ``{"tick": int}`` every ``interval_ms`` until cancelled
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pydantic

from python_worker import BaseAdapter, HandlerError, InputError, StreamChunk, ToolContext, tool


class Point(pydantic.BaseModel):
    """An input item of ``point_input``."""

    x: float
    y: float


class QuotaExceeded(Exception):
    """An exception with fields: the caller gets them as error details (``{"retry_after": 2.5, "limit": 100}``)."""

    def __init__(self, retry_after: float, limit: int) -> None:
        super().__init__(f"quota of {limit} calls exceeded, retry in {retry_after} s")
        self.retry_after = retry_after
        self.limit = limit


class ShowcaseAdapter(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()  # cooperative: a composite adapter (adapters.dashboard) inherits several adapters
        # what happened to streams, by tag: lets a caller check that cancellation reached the tool
        self._events: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _event(self, tag: str, key: str) -> None:
        if tag:
            with self._lock:
                self._events.setdefault(tag, {})[key] = time.time()

    # -- streams --------------------------------------------------------------------------------------------
    @tool(description="Stream progress updates", supports_streaming=True)
    def stream_progress(
        self, steps: int = 10, delay_ms: float = 0.0, ctx: ToolContext | None = None
    ) -> Iterator[dict[str, Any]]:
        if steps < 0:
            raise ValueError("steps must be >= 0")
        for i in range(steps):
            if delay_ms and ctx is not None and not ctx.sleep(delay_ms / 1000):
                return
            yield {"step": i + 1, "total": steps, "progress": (i + 1) / steps * 100}

    @tool(description="Stream numbers 0..count-1", supports_streaming=True)
    def stream_numbers(self, count: int = 10) -> Iterator[dict[str, Any]]:
        for i in range(count):
            yield {"number": i, "is_last": i == count - 1}

    @tool(description="Stream items, the last one as an explicit final chunk", supports_streaming=True)
    def stream_items(self, count: int = 5) -> Iterator[StreamChunk[dict[str, Any]]]:
        for i in range(count):
            yield StreamChunk(
                data={"index": i + 1, "value": f"Item {i + 1}"},
                is_final=i == count - 1,
                metadata={"item": str(i + 1)},
            )

    @tool(description="Stream small dicts {'i': n} as fast as possible (benchmarks)", supports_streaming=True)
    def stream_small(self, count: int = 1000) -> Iterator[dict[str, int]]:
        for i in range(count):
            yield {"i": i}

    @tool(description="Stream float32 arrays of batch_rows x cols", supports_streaming=True)
    def stream_arrays(
        self, batches: int = 4, batch_rows: int = 1024, cols: int = 1024, as_json: bool = False
    ) -> Iterator[Any]:
        rng = np.random.default_rng(0)
        block = rng.standard_normal((batch_rows, cols), dtype=np.float32)
        for i in range(batches):
            block[0, 0] = i
            yield {"rows": block.tolist()} if as_json else block

    @tool(description="Stream lines of text as text/plain chunks", supports_streaming=True)
    def stream_text(self, lines: int = 3) -> Iterator[StreamChunk[str]]:
        for i in range(lines):
            yield StreamChunk(data=f"line {i + 1}", content_type="text/plain; charset=utf-8")

    @tool(description="Stream a few chunks, then raise ValueError", supports_streaming=True)
    def failing_stream(self, fail_at: int = 3) -> Iterator[dict[str, int]]:
        for i in range(fail_at):
            yield {"step": i + 1}
        raise ValueError(f"failed at step {fail_at + 1}")

    @tool(description="Tick every interval_ms until cancelled", supports_streaming=True)
    def endless_stream(
        self, interval_ms: float = 50.0, tag: str = "", ctx: ToolContext | None = None
    ) -> Iterator[dict[str, int]]:
        assert ctx is not None
        self._event(tag, "started")
        tick = 0
        try:
            while True:
                yield {"tick": tick}
                tick += 1
                if tag:
                    self._events[tag]["ticks"] = tick
                if interval_ms and not ctx.sleep(interval_ms / 1000):
                    self._event(tag, "cancel_seen")
                    return
        finally:
            self._event(tag, "finally")

    @tool(description="Yield once, then block (checking the cancel flag) for up to `seconds`", supports_streaming=True)
    def blocking_stream(
        self, seconds: float = 30.0, tag: str = "", ctx: ToolContext | None = None
    ) -> Iterator[dict[str, float]]:
        assert ctx is not None
        self._event(tag, "started")
        try:
            yield {"blocked_for": seconds}
            if ctx.cancel_event.wait(seconds):
                self._event(tag, "cancel_seen")
        finally:
            self._event(tag, "finally")

    @tool(description="Report progress through the context while streaming", supports_streaming=True)
    def progress_demo(self, steps: int = 3, ctx: ToolContext | None = None) -> Iterator[dict[str, int]]:
        assert ctx is not None
        for i in range(steps):
            ctx.report_progress(i + 1, total=steps, message=f"step {i + 1}")
            yield {"done": i + 1}

    @tool(description="Broken on purpose: yields after its final chunk", supports_streaming=True)
    def yield_after_final(self) -> Iterator[Any]:
        yield StreamChunk(data={"final": True}, is_final=True)
        yield {"too": "late"}

    @tool(description="Broken on purpose: a streaming tool that returns a dict", supports_streaming=True)
    def returns_dict(self) -> Iterator[Any]:
        return {"not": "a stream"}  # type: ignore[return-value]  # lies about its type on purpose

    # -- unary ----------------------------------------------------------------------------------------------
    @tool(description="Return the value unchanged")
    def echo(self, value: Any = None) -> Any:
        return value

    @tool(description="Add two numbers")
    def add(self, a: float, b: float) -> float:
        return a + b

    @tool(description="Greet someone")
    def greet(self, name: str, greeting: str = "Hello", punctuation: list[str] | None = None) -> str:
        return f"{greeting}, {name}{''.join(punctuation or ['!'])}"

    @tool(description="Sleep up to `seconds` (stops early when cancelled)")
    def slow_tool(self, seconds: float = 1.0, tag: str = "", ctx: ToolContext | None = None) -> dict[str, Any]:
        assert ctx is not None
        self._event(tag, "started")
        finished = ctx.sleep(seconds)
        self._event(tag, "finally" if finished else "cancel_seen")
        return {"slept": seconds, "cancelled": not finished}

    @tool(description="Raise ValueError(message)")
    def fail(self, message: str = "epochs must be > 0") -> None:
        raise ValueError(message)

    @tool(description="Raise QuotaExceeded(retry_after, limit=100): its fields reach the caller as details")
    def quota(self, retry_after: float = 2.5) -> None:
        raise QuotaExceeded(retry_after=retry_after, limit=100)

    @tool(description="Statistics of an array argument")
    def array_stats(self, values: np.ndarray) -> dict[str, Any]:
        return {
            "dtype": str(values.dtype),
            "shape": list(values.shape),
            "sum": float(values.sum()),
            "mean": float(values.mean()) if values.size else None,
        }

    @tool(description="Multiply an array by a factor")
    def scale_array(self, values: np.ndarray, factor: float = 2.0) -> np.ndarray:
        return values * factor

    @tool(description="Reverse raw bytes")
    def reverse_bytes(self, blob: bytes) -> bytes:
        return blob[::-1]

    @tool(description="A big integer (JSON keeps it exact)")
    def big_int(self, exponent: int = 70) -> int:
        return 2**exponent

    @tool(description="Count calls in this session; returns the count and the worker that served it")
    def session_counter(self, ctx: ToolContext) -> dict[str, Any]:
        if ctx.session is None:
            raise ValueError("session_counter needs a session_id")
        count = ctx.session.state.get("count", 0) + 1
        ctx.session.state["count"] = count
        return {"count": count, "worker_id": ctx.worker_id, "session_id": ctx.session_id}

    @tool(description="What happened to the streams started with `tag` (unix times; ticks: values yielded)")
    def stream_events(self, tag: str) -> dict[str, float]:
        with self._lock:
            return dict(self._events.get(tag, {}))

    # -- streams both ways: input from the caller, handler calls to it -----------------------------------------
    @tool(description="Sum item['i'] over the caller's input stream (benchmarks: small items)")
    def sum_input(self, items: Iterator[dict[str, int]]) -> int:
        return sum(item["i"] for item in items)

    @tool(description="Yield each input item back as it arrives (full duplex)")
    def echo_input(self, items: Iterator[Any]) -> Iterator[Any]:
        yield from items

    @tool(description="Yield each input item back as it arrives (async generator)")
    async def aecho_input(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for item in items:
            yield item

    @tool(description="Count the input's items (async)")
    async def acount_input(self, items: AsyncIterator[Any]) -> int:
        count = 0
        async for _ in items:
            count += 1
        return count

    @tool(description="Read n input items and return them (the rest is never read)")
    def take_input(self, items: Iterator[Any], n: int, tag: str = "") -> list[Any]:
        taken: list[Any] = []
        try:
            for item in items:
                taken.append(item)
                if len(taken) >= n:
                    break
            return taken
        except InputError:
            self._event(tag, "input_error")
            raise
        finally:
            self._event(tag, "finally")

    @tool(description="Yield the count of items read so far, one chunk per item; records its finally under tag")
    def hold_input(self, items: Iterator[Any], tag: str = "") -> Iterator[int]:
        try:
            for count, _ in enumerate(items, 1):
                self._event(tag, "item")
                yield count
        finally:
            self._event(tag, "finally")

    @tool(description="Shape and sum of each float array the caller streams")
    def array_input(self, frames: Iterator[np.ndarray]) -> Iterator[dict[str, Any]]:
        for frame in frames:
            yield {"shape": list(frame.shape), "sum": float(frame.sum())}

    @tool(description="Total bytes of the blobs the caller streams")
    def bytes_input(self, blobs: Iterator[bytes]) -> int:
        return sum(len(blob) for blob in blobs)

    @tool(description="Sum of x*y over the points the caller streams (items validated as Point)")
    def point_input(self, points: Iterator[Point]) -> float:
        return sum(point.x * point.y for point in points)

    @tool(description="Call the caller's handler `name` with `args`; its value, or {'error': {type, message}}")
    def ask(self, name: str, ctx: ToolContext, args: Any = None, timeout: float | None = None) -> Any:
        try:
            return ctx.call(name, args, timeout=timeout)
        except HandlerError as exc:
            return {"error": {"type": exc.type, "message": exc.message}}

    @tool(description="ask, as an async tool (await ctx.acall)")
    async def aask(self, name: str, ctx: ToolContext, args: Any = None, timeout: float | None = None) -> Any:
        try:
            return await ctx.acall(name, args, timeout=timeout)
        except HandlerError as exc:
            return {"error": {"type": exc.type, "message": exc.message}}

    @tool(description="Yield the value of handler `name` called with {'i': i} for i in range(count)")
    def ask_stream(self, name: str, ctx: ToolContext, count: int = 3) -> Iterator[Any]:
        for i in range(count):
            yield ctx.call(name, {"i": i})

    @tool(description="Call handler `name` `count` times; µs per round trip, measured here (benchmarks)")
    def handler_latency(self, name: str, ctx: ToolContext, count: int = 1000) -> dict[str, float]:
        samples = []
        for i in range(count):
            started = time.perf_counter()
            ctx.call(name, {"i": i})
            samples.append((time.perf_counter() - started) * 1e6)
        samples.sort()
        return {
            "p50_us": samples[len(samples) // 2],
            "p99_us": samples[min(len(samples) - 1, len(samples) * 99 // 100)],
        }
