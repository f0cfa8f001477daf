"""A stream's chunks from the engine's threads to the event loop, with the client's overflow strategy and rate.

The engine is synchronous: a stream's tool runs on its own thread and its chunks wait in the call's bounded
:class:`~python_worker.engine.buffer.ChunkBuffer`. A *pump* (one thread of the front's executor per stream)
opens the call, takes its batches and hands them to the event loop here:

- ``block`` (the default): the pump hands over one batch at a time and waits until the loop has sent all of it;
  while it waits the call's buffer fills and the tool pauses at its ``yield``: a slow client, or the rate
  limit, backpressures the tool, and memory stays bounded by the buffer and one batch;
- ``latest``: the pump never waits: it keeps only the newest chunk (and the final one, never dropped), counting
  what it replaced (``dropped_chunks`` in the final chunk's metadata). The tool runs at its own pace; memory is
  one chunk.

``max_rate_hz`` spaces the chunk events the loop sends (the final chunk is not held back by it). The loop is
woken with ``call_soon_threadsafe`` only when it is waiting, so a fast stream costs one wake-up per batch at
most. ``asyncio.Queue`` cannot be waited on from a thread, and ``janus``-style queues hold items, not "the newest
one"; this hand-off is a lock, a deque and an event.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from ...engine import Engine, StreamHandle
from ...engine.exchange import Exchange
from .chunks import Chunk
from .errors import cancelled, deadline_exceeded

BLOCK = "block"
LATEST = "latest"
OVERFLOWS = (BLOCK, LATEST)


class StreamFeed:
    """One streaming call as an async source of chunks: :meth:`open` it (raises what refuses the call), take
    chunks with :meth:`next` until None, then read :attr:`error` (what ended the stream: the tool's error, a
    deadline, a cancellation; None for a normal end), and always :meth:`cancel` it when done (its tool is stopped
    if still running). Errors are handed over, not re-raised, so they keep the tool's traceback as it was."""

    def __init__(
        self,
        engine: Engine,
        request: Any,
        metadata: Mapping[str, str],
        *,
        executor: Executor,
        overflow: str = BLOCK,
        max_rate_hz: float | None = None,
        timeout_ms: int | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        self._engine = engine
        self._exchange = exchange  # the call's input and handler calls (WebSocket); None: neither
        self._request = request
        self._metadata = metadata
        self._executor = executor
        self._latest_mode = overflow == LATEST
        self._interval = 1.0 / max_rate_hz if max_rate_hz else 0.0
        self._timeout_ms = timeout_ms
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Chunk] = deque()  # block: the batch being sent
        self._latest: Chunk | None = None  # latest: the newest non-final chunk not yet sent
        self._final: Chunk | None = None
        self.dropped = 0
        self._done = False  # the pump has ended
        self._error: BaseException | None = None
        self.error: BaseException | None = None  # what ended the stream, once next() has returned None
        self._closed = False  # cancelled: the pump stops
        self._handle: StreamHandle | None = None
        self._waiting = False
        self._wake = asyncio.Event()
        self._opened: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._next_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._reason: BaseException | None = None
        self._pump: asyncio.Future[None] | None = None

    # -- the loop's side ------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the call; raises what refuses it (unknown tool, bad arguments, no free call slot, ...)."""
        self._pump = self._loop.run_in_executor(self._executor, self._run)
        refused = await asyncio.shield(self._opened)
        if refused is not None:
            raise refused
        if self._timeout_ms:
            self._timer = self._loop.call_later(self._timeout_ms / 1000, self._expire)

    @property
    def final_extra(self) -> dict[str, str] | None:
        """What the front adds to the final chunk's metadata."""
        return {"dropped_chunks": str(self.dropped)} if self.dropped else None

    async def next(self) -> Chunk | None:
        """The next chunk to send (waiting for the rate limit), or None once the stream has ended (see
        :attr:`error`)."""
        while True:
            with self._cond:
                ready = self._peek()
                if ready is None:
                    if self._done:
                        self._end()
                        return None
                    self._wake.clear()
                    self._waiting = True
            if ready is None:
                await self._wake.wait()
                continue
            if not ready[3] and self._interval:
                delay = self._next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            with self._cond:
                chunk = self._take()
            if chunk is None:  # cancelled meanwhile
                continue
            if not chunk[3] and self._interval:
                self._next_at = time.monotonic() + self._interval
            return chunk

    def cancel(self, reason: BaseException | None = None) -> None:
        """Stop the call (its tool's ``finally`` runs) and the pump; safe to call more than once. ``reason``: the
        error the stream ends with (default: CANCELLED by its caller)."""
        if self._timer is not None:
            self._timer.cancel()
        with self._cond:
            if not self._closed:
                self._reason = reason
            self._closed = True
            self._queue.clear()
            self._latest = None
            self._cond.notify_all()
            handle = self._handle
        if handle is not None:
            handle.cancel(self._why())

    async def wait_closed(self) -> None:
        """Wait for the pump to end (the call's slot freed)."""
        if self._pump is not None:
            await asyncio.shield(self._pump)

    def _why(self) -> str:
        return "DEADLINE_EXCEEDED" if self._expired else "CANCELLED"

    def _expire(self) -> None:
        self._expired = True
        self.cancel()
        with self._cond:
            self._signal()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._expired:
            self.error = deadline_exceeded(self._timeout_ms or 0)
        elif self._error is not None:
            self.error = self._error
        elif self._closed:
            self.error = self._reason or cancelled()
        return None

    def _peek(self) -> Chunk | None:
        # with the lock held
        if self._closed and not self._done:
            return None
        if self._queue:
            return self._queue[0]
        return self._latest or self._final

    def _take(self) -> Chunk | None:
        # with the lock held
        if self._queue:
            chunk = self._queue.popleft()
            if not self._queue:
                self._cond.notify_all()  # the pump may hand over the next batch
            return chunk
        if self._latest is not None:
            chunk, self._latest = self._latest, None
            return chunk
        final, self._final = self._final, None
        return final

    def _signal(self) -> None:
        # with the lock held: wake the loop if it waits
        if self._waiting:
            self._waiting = False
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- the pump (an executor thread) ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            handle = self._engine.stream(self._request, self._metadata, frame_large=False, exchange=self._exchange)
        except BaseException as exc:
            self._loop.call_soon_threadsafe(self._opened.set_result, exc)
            with self._cond:
                self._done = True
            return
        error: BaseException | None = None
        try:
            with self._cond:
                self._handle = handle
                closed = self._closed
            if closed:
                handle.cancel(self._why())
            self._loop.call_soon_threadsafe(self._opened.set_result, None)
            handle.start()
            for batch in handle.batches():
                if not self._offer(batch):
                    break  # the client went: closing the generator ends the call as cancelled
        except BaseException as exc:  # the tool's error, after its last chunk
            error = exc
        finally:
            handle.close()
            with self._cond:
                self._done = True
                self._error = error
                self._signal()

    def _offer(self, batch: list[Any]) -> bool:
        """Hand a batch to the loop; False once the feed is closed."""
        with self._cond:
            if self._latest_mode:
                if self._closed:
                    return False
                for chunk in batch:
                    if chunk[3]:
                        self._final = chunk
                    else:
                        if self._latest is not None:
                            self.dropped += 1
                        self._latest = chunk
            else:
                while self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return False
                self._queue.extend(batch)
            self._signal()
            return True
