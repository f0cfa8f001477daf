"""ChunkBuffer: the bounded FIFO between a tool's thread and the gRPC thread that sends its chunks.

A full buffer blocks the producer (so a slow consumer pauses the generator and memory stays bounded); the
consumer takes everything that is ready in one go (so batches form by themselves when the producer is fast and
nothing ever waits to fill one when it is slow). ``queue.Queue`` takes its lock per item on both sides and
cannot hand over "all that is ready, up to N bytes", which is why this is written here.

A producer that must not block (an async generator on the worker's event loop) uses :meth:`has_room` and
:meth:`put_nowait` instead of :meth:`put`, and is told through ``on_room`` when the consumer has made room.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Cancelled(Exception):
    """The consumer has gone: the producer must stop."""


class ChunkBuffer:
    """Bounded by a chunk count and a byte count; one producer, one consumer."""

    def __init__(self, max_chunks: int = 4096, max_bytes: int = 8 << 20) -> None:
        # items and their sizes side by side: no (item, size) tuple per chunk, and the usual take is list(items)
        self._items: deque[Any] = deque()
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self._max_chunks = max_chunks
        self._max_bytes = max_bytes
        # put() takes the lock itself (a C call) rather than through the Condition (Python-level __enter__ and
        # __exit__): it runs once per chunk
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._done = False
        self._error: BaseException | None = None
        self._cancelled = False
        self._consumer_waiting = False
        self._producer_waiting = False
        # called (on the consumer's thread) once room is made after has_room() said no, and on cancel
        self.on_room: Callable[[], object] | None = None
        self._room_wanted = False

    def put(self, item: Any, nbytes: int) -> None:
        """Append ``item``; block while the buffer is full. Raises :class:`Cancelled` once cancelled."""
        with self._lock:
            while (
                not self._cancelled
                and self._items
                and (len(self._items) >= self._max_chunks or self._bytes + nbytes > self._max_bytes)
            ):
                self._producer_waiting = True
                self._cond.wait()
                self._producer_waiting = False
            if self._cancelled:
                raise Cancelled
            self._items.append(item)
            self._sizes.append(nbytes)
            self._bytes += nbytes
            if self._consumer_waiting:
                self._wake_consumer()

    def _wake_consumer(self) -> None:
        # With the lock held. The flag goes down with the notification: the consumer needs the GIL and this lock
        # before it can clear it itself, and a producer that kept putting meanwhile would notify again per item
        # (a Python-level notify_all each, ~0.6 of all puts in a fast stream). A consumer that wakes to nothing
        # raises it again before it waits.
        self._consumer_waiting = False
        self._cond.notify_all()

    def _wake_producer(self) -> None:
        # with the lock held; as _wake_consumer
        self._producer_waiting = False
        self._cond.notify_all()

    def has_room(self) -> bool:
        """True when :meth:`put` would not block; otherwise False, and ``on_room`` is called once there is room.
        Raises :class:`Cancelled` once cancelled."""
        with self._lock:
            if self._cancelled:
                raise Cancelled
            if not self._items or (len(self._items) < self._max_chunks and self._bytes < self._max_bytes):
                return True
            self._room_wanted = True
            return False

    def put_nowait(self, item: Any, nbytes: int) -> None:
        """Append ``item`` even if the buffer is full (after :meth:`has_room`, or for small out-of-band items).
        Raises :class:`Cancelled` once cancelled."""
        with self._lock:
            if self._cancelled:
                raise Cancelled
            self._items.append(item)
            self._sizes.append(nbytes)
            self._bytes += nbytes
            if self._consumer_waiting:
                self._wake_consumer()

    def _made_room(self) -> None:
        # with the lock held
        if self._room_wanted:
            self._room_wanted = False
            if self.on_room is not None:
                self.on_room()

    def finish(self, error: BaseException | None = None) -> None:
        """The producer is done (with ``error`` if it failed); the consumer drains what is left first."""
        with self._cond:
            self._done = True
            self._error = error
            self._cond.notify_all()

    def cancel(self) -> None:
        """The consumer has gone: wake and stop the producer, drop what is buffered."""
        with self._cond:
            self._cancelled = True
            self._items.clear()
            self._sizes.clear()
            self._bytes = 0
            self._cond.notify_all()
            self._room_wanted = True
            self._made_room()

    def take(self, max_chunks: int, max_bytes: int) -> list[Any] | None:
        """Block until something is ready; return up to ``max_chunks`` items / ``max_bytes`` bytes (at least one
        item), or None once the producer has finished and everything was taken. Raises the producer's error
        after its last chunk, and :class:`Cancelled` after :meth:`cancel`."""
        with self._cond:
            while not self._items and not self._done and not self._cancelled:
                self._consumer_waiting = True
                self._cond.wait()
                self._consumer_waiting = False
            if self._cancelled:
                raise Cancelled
            if not self._items:
                if self._error is not None:
                    raise self._error
                return None
            items = self._items
            if len(items) <= max_chunks and self._bytes <= max_bytes:
                # everything fits (the usual case): swap the deques, so the producer never waits for a copy
                self._items, self._sizes, self._bytes = deque(), deque(), 0
                if self._producer_waiting:
                    self._wake_producer()
                self._made_room()
            else:
                sizes = self._sizes
                out: list[Any] = []
                size = 0
                while items and len(out) < max_chunks:
                    nbytes = sizes[0]
                    if out and size + nbytes > max_bytes:
                        break
                    sizes.popleft()
                    out.append(items.popleft())
                    size += nbytes
                self._bytes -= size
                if self._producer_waiting:
                    self._wake_producer()
                self._made_room()
                return out
        return list(items)
