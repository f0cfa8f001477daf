"""Deadlines: one timer thread for every call of a worker.

A ``threading.Timer`` per call would start a thread per call (~50 µs, and a thread's memory); here a call's
deadline is a heap entry (a push, and a wake-up of the timer thread only when it becomes the earliest). A
cancelled deadline stays in the heap, marked, until its time comes or until cancelled entries are the majority,
when the heap is rebuilt without them: thousands of calls a second with the pool's default 300 s deadline must not
pile up five minutes of dead entries. The link pushes an inline call's long deadline only once the call has
outlived a watchdog tick (``transports/link.py``, ``WATCHED_DEADLINE_S``): most calls never touch the heap.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Deadline:
    """A scheduled callback; :meth:`cancel` it when the call ends first."""

    __slots__ = ("callback", "cancelled", "owner", "when")

    def __init__(self, owner: Deadlines, when: float, callback: Callable[[], None]) -> None:
        self.owner = owner
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = None  # drop what the callback holds at once
            self.owner._cancelled()


class Deadlines:
    """Runs each callback at its time (monotonic seconds), on one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._dead = 0  # cancelled entries still in the heap
        self._counter = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def after(self, seconds: float, callback: Callable[[], None]) -> Deadline:
        return self.at(time.monotonic() + seconds, callback)

    def at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Run ``callback`` at ``when`` (monotonic seconds; at once when that has passed)."""
        deadline = Deadline(self, when, callback)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline.when, next(self._counter), deadline))
            if earliest is None or deadline.when < earliest:
                self._cond.notify()
        return deadline

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def _cancelled(self) -> None:
        # counted without the lock (cancelling is on every call's path); the count only decides when to
        # rebuild, so a lost increment merely delays that
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._heap):
            with self._cond:
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._dead = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when, _, deadline = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if deadline.cancelled:
                    self._dead = max(0, self._dead - 1)
                callback = None if deadline.cancelled else deadline.callback
                deadline.cancelled = True  # done: a later cancel() changes nothing
            if callback is not None:
                callback()
