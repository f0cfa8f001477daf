"""The worker's recent changes: every QCoDeS set (through the on-set hook) and every change a monitor reported,
newest last, in a ring buffer of :data:`CAPACITY` entries numbered in the order they were recorded.

``recent(limit)`` returns the newest ``limit`` entries. ``recent(limit, since_seq)`` returns the oldest ``limit``
entries after ``since_seq``, ``more`` saying whether others follow, so a caller can page through everything by
passing the last ``seq`` it got; ``missed`` counts the entries after ``since_seq`` that had already left the
buffer: nothing is lost without a count.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from .filters import is_selected
from .readings import ChangeEvent
from .sources.base import ParameterInfo

CAPACITY = 1000


class RecentChanges:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def _add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append({"seq": next(self._seq), **entry})

    def add_set(self, event: Any) -> None:
        """A QCoDeS set (a :class:`~.sources.qcodes_sets.SetEvent`)."""
        entry = event.to_dict()
        entry.pop("seq")
        self._add({"kind": "set", **entry, "error": None, "monitor_id": None})

    def add_change(self, monitor_id: str, change: ChangeEvent) -> None:
        """A change a monitor's poll found."""
        reading = change.reading.to_dict()
        self._add({"kind": "poll", **reading, "monitor_id": monitor_id})

    def recent(
        self,
        limit: int,
        since_seq: int | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            entries = list(self._entries)
            last = entries[-1]["seq"] if entries else 0
        first = entries[0]["seq"] if entries else last + 1
        after = 0 if since_seq is None else since_seq
        missed = 0 if since_seq is None else max(0, min(first, last + 1) - after - 1)
        wanted = [
            e
            for e in entries
            if e["seq"] > after and is_selected(ParameterInfo(e["instrument"], e["parameter"]), include, exclude)
        ]
        page = wanted[-limit:] if since_seq is None else wanted[:limit]
        return {
            "changes": page,
            "last_seq": last,
            "more": since_seq is not None and len(wanted) > limit,
            "missed": missed,
            "capacity": self.capacity,
        }
