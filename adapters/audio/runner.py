"""The loop every stream runs: read blocks, feed the analyser, emit chunks at a bounded rate, stop on a bound.

Time is audio time: ``t_s`` is the number of frames read so far divided by the sample rate, measured at the end of
the block just read. Rate limiting is in audio time as well — consecutive chunks are at least 1/max_rate_hz apart
— so a file or a signal read faster than real time yields exactly the chunks a live device would; chunks leave at
block boundaries, so the actual rate is at most ``max_rate_hz`` (and at most one chunk per block).

When the source ends (the end of a file) or ``duration_s`` is reached, the audio read since the last chunk is
reported in one more chunk, however short that interval, so every sample is reported: the last two chunks may
then be closer than 1/max_rate_hz. A stream stopped by ``max_chunks`` or cancellation reports nothing more.

With ``realtime`` a file or a signal is paced to the wall clock, as if it came from a device; a device is paced
by its hardware anyway. Cancellation is checked between blocks and while waiting (the device read times out every
0.1 s), so a cancelled stream stops within about a block or 0.1 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from python_worker import StreamChunk, ToolContext

from .sources import BlockSource

READ_TIMEOUT_S = 0.1


class Analyser(Protocol):
    @property
    def ready(self) -> bool: ...

    def feed(self, block: Any) -> None: ...

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any] | StreamChunk[Any]: ...


def check_bounds(max_rate_hz: float | None, duration_s: float | None, max_chunks: int | None) -> None:
    """Clear errors for bounds that make no sense."""
    if max_rate_hz is not None and max_rate_hz < 0:
        raise ValueError(f"max_rate_hz must be >= 0 (0 or null: one chunk per block), got {max_rate_hz}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(
            f"duration_s must be > 0 (or null: until the source ends or the stream is cancelled), got {duration_s}"
        )
    if max_chunks is not None and max_chunks <= 0:
        raise ValueError(f"max_chunks must be > 0 (or null: no limit), got {max_chunks}")


def run(
    source: BlockSource,
    analyser: Analyser,
    ctx: ToolContext | None,
    *,
    max_rate_hz: float | None,
    duration_s: float | None,
    max_chunks: int | None,
    realtime: bool,
) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
    """Yield the analyser's chunks for an opened ``source`` until a bound, the source's end or cancellation."""
    interval = 1.0 / max_rate_hz if max_rate_hz else 0.0
    rate = source.sample_rate
    frame_limit = round(duration_s * rate) if duration_s else None
    frames = chunks = 0
    emitted_at = 0  # frames read when the last chunk was made
    next_emit = 0.0
    started = time.monotonic()
    pace = realtime and not source.live
    cancel = ctx.cancel_event if ctx is not None else threading.Event()  # no context: never cancelled

    def chunk() -> dict[str, Any] | StreamChunk[Any]:
        nonlocal chunks, emitted_at
        header = {"t_s": round(frames / rate, 6), "index": chunks, "overflows": source.overflows}
        chunks += 1
        emitted_at = frames
        return analyser.snapshot(header)

    while not cancel.is_set():
        block = source.read(READ_TIMEOUT_S)
        if block is None:
            if source.ended:
                break
            continue
        if frame_limit is not None:
            block = block[: frame_limit - frames]
        analyser.feed(block)
        frames += len(block)
        t = frames / rate
        if pace:
            ahead = t - (time.monotonic() - started)
            if ahead > 0 and cancel.wait(ahead):  # wakes at once on cancellation
                return
        if analyser.ready and t >= next_emit - 1e-9:
            yield chunk()
            next_emit = t + interval
            if max_chunks is not None and chunks >= max_chunks:
                return
        if frame_limit is not None and frames >= frame_limit:
            break
    else:
        return  # cancelled
    # the end of the file or of duration_s: report the last partial interval, so every sample is reported
    if analyser.ready and frames > emitted_at:
        yield chunk()
