"""The engine's deadline timer: callbacks run at their time, cancelled ones never, and cancelled entries do not
pile up."""

from __future__ import annotations

import threading
import time

from python_worker.engine.deadlines import Deadlines

from .support import eventually


def test_callbacks_run_at_their_time_in_order() -> None:
    deadlines = Deadlines()
    fired: list[tuple[str, float]] = []
    start = time.monotonic()
    for name, delay in (("late", 0.15), ("early", 0.05), ("middle", 0.1)):
        deadlines.after(delay, lambda name=name: fired.append((name, time.monotonic() - start)))
    eventually(lambda: len(fired) == 3, timeout=5)
    assert [name for name, _ in fired] == ["early", "middle", "late"]
    assert all(at >= delay for (_, at), delay in zip(fired, (0.05, 0.1, 0.15), strict=True))


def test_a_cancelled_deadline_never_fires() -> None:
    deadlines = Deadlines()
    fired = threading.Event()
    deadlines.after(0.05, fired.set).cancel()
    sentinel = threading.Event()
    deadlines.after(0.1, sentinel.set)
    assert sentinel.wait(5)
    assert not fired.is_set()


def test_cancelled_entries_are_dropped_from_the_heap() -> None:
    deadlines = Deadlines()
    for _ in range(10_000):
        deadlines.after(300, lambda: None).cancel()
    assert len(deadlines) == 0
    assert len(deadlines._heap) <= 130  # rebuilt whenever cancelled entries are the majority
