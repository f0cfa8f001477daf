"""The monitors running in this worker, and how the last ones ended.

Each ``monitor`` call registers itself when it starts and records, in its ``finally``, why it stopped and that it
closed its source: ``active_monitors`` reads this, so a caller (or a test) can check that cancelling a stream
really stopped its polling.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

KEEP_FINISHED = 50


@dataclass(slots=True)
class MonitorRecord:
    monitor_id: str
    source: dict[str, Any]
    parameters: int
    started_at: float
    polls: int = 0
    updates: int = 0
    stopped_at: float | None = None
    reason: str | None = None  # max_polls | max_updates | duration | cancelled | error: ...
    source_closed: bool = False


class MonitorRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, MonitorRecord] = {}
        self._finished: deque[MonitorRecord] = deque(maxlen=KEEP_FINISHED)

    def start(self, monitor_id: str, source: dict[str, Any], parameters: int) -> MonitorRecord:
        with self._lock:
            monitor_id = monitor_id or uuid.uuid4().hex[:12]
            if monitor_id in self._active:
                raise ValueError(f"monitor_id {monitor_id!r} is already running: choose another")
            record = MonitorRecord(monitor_id, source, parameters, time.time())
            self._active[monitor_id] = record
            return record

    def finish(self, record: MonitorRecord, reason: str, source_closed: bool) -> None:
        with self._lock:
            record.reason = record.reason or reason
            record.source_closed = source_closed
            record.stopped_at = time.time()
            self._active.pop(record.monitor_id, None)
            self._finished.append(record)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "active": len(self._active),
                "monitors": [asdict(r) for r in self._active.values()],
                "finished": [asdict(r) for r in self._finished],
            }
