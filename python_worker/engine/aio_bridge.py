"""A blocking iterator, run on an executor thread, read from an event loop one item at a time.

The engine is synchronous: a stream's chunks wait in its bounded buffer and :meth:`StreamHandle.batches` blocks
until some are ready. An asyncio front (gRPC's ``grpc.aio`` server) must never block its loop, so a *pump* (one
thread of the front's bounded executor, for as long as the stream runs) iterates the source and hands each item
to the loop. It hands over one item at a time and waits until the loop has taken it: the loop takes the next
item only once it has sent the last one, so a slow client backpressures the pump, the engine's buffer fills and
the tool pauses at its ``yield``; memory stays bounded by that buffer and two items. The loop is woken with
``call_soon_threadsafe`` only when it is waiting, so a fast stream costs at most one wake-up per item.

Nothing here knows about gRPC or chunks (``transports/http/feed.py`` adds overflow strategies and a rate on top
of the same idea for the HTTP front).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")

_EMPTY: object = object()


class ThreadToLoop(Generic[T]):
    """Iterate ``source()`` on a thread of ``executor``; the loop reads the items with :meth:`next` (None at the
    end; the source's exception is raised there, after its last item). :meth:`close` stops the pump at its next
    hand-off (the source iterator is closed there, on the pump's thread); ``on_done`` runs on the pump's thread
    once it has stopped iterating, whatever ended it. Must be created on the loop's thread."""

    def __init__(
        self,
        source: Callable[[], Iterator[T]],
        executor: Executor,
        *,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._source = source
        self._executor = executor
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition(threading.Lock())
        self._item: object = _EMPTY
        self._done = False
        self._error: BaseException | None = None
        self._closed = False
        self._waiting = False  # the loop waits in next()
        self._wake = asyncio.Event()
        self._pump: asyncio.Future[None] | None = None

    @property
    def started(self) -> bool:
        return self._pump is not None

    def start(self, context: contextvars.Context | None = None) -> asyncio.Future[None]:
        """Start the pump, in ``context`` when given (e.g. the one the source was opened in: its log fields);
        returns the pump's future (done once it has stopped)."""
        run = self._run if context is None else functools.partial(context.run, self._run)
        self._pump = self._loop.run_in_executor(self._executor, run)
        return self._pump

    async def next(self) -> T | None:
        """The next item, or None once the source has ended; raises the source's error."""
        while True:
            with self._cond:
                item = self._item
                if item is not _EMPTY:
                    self._item = _EMPTY
                    self._cond.notify()  # the pump may hand over the next item
                    return item  # type: ignore[return-value]
                if self._done:
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    return None
                self._wake.clear()
                self._waiting = True
            await self._wake.wait()

    def close(self) -> None:
        """Stop the pump at its next hand-off; safe to call more than once, from the loop."""
        with self._cond:
            self._closed = True
            self._item = _EMPTY
            self._cond.notify()

    async def wait_closed(self) -> None:
        """Wait until the pump has stopped (``on_done`` has run)."""
        if self._pump is not None:
            await asyncio.shield(self._pump)

    # -- the pump (an executor thread) ----------------------------------------------------------------------
    def _run(self) -> None:
        error: BaseException | None = None
        iterator: Iterator[T] | None = None
        try:
            iterator = self._source()
            for item in iterator:
                if not self._offer(item):
                    break
        except BaseException as exc:
            error = exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # a generator abandoned by the loop ends here (GeneratorExit at its yield)
                except BaseException as exc:
                    error = error or exc
            try:
                if self._on_done is not None:
                    self._on_done()
            finally:
                with self._cond:
                    self._done = True
                    self._error = None if self._closed else error
                    self._signal()

    def _offer(self, item: T) -> bool:
        """Hand ``item`` to the loop once it has taken the previous one; False once closed."""
        with self._cond:
            while self._item is not _EMPTY and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._item = item
            self._signal()
            return True

    def _signal(self) -> None:
        # with the lock held: wake the loop if it waits
        if self._waiting:
            self._waiting = False
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to read
                self._loop.call_soon_threadsafe(self._wake.set)
