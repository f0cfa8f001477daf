"""The monitor loop: poll on a fixed schedule, send a snapshot first, then deltas, heartbeats and an end.

Schedule: polls start at t0, t0 + dt, t0 + 2 dt, ... (dt = poll_interval). A poll that overruns its slot makes
the next one start at once and the schedule restart from there (missed polls are skipped, never bunched).
Between polls the loop waits with ``ctx.sleep``, which returns at once when the call is cancelled; it also checks
for cancellation between two reads of one poll. The loop ends after ``max_polls`` polls, after ``max_updates``
updates (snapshot and deltas), or ``duration_s`` seconds after it started (no poll starts after that), whichever
comes first, and then sends an ``end`` chunk as the stream's final chunk. A cancelled call sends nothing more.

Heartbeats: when ``heartbeat_s`` is set and nothing has been sent for that long (no change), a heartbeat chunk
says the monitor is alive; it is sent on time even between polls, so it works with long poll intervals too.

Before every poll but the first the source lists its instruments again (``refresh``): parameters that appeared
(and pass include/exclude) are read and reported in the delta's ``added`` readings, parameters that went away
in its ``removed`` names. Sources that hear sets (QCoDeS) hand over the sets of the monitored parameters made
since the previous poll, in order, in ``sets``: a set undone before the poll is still reported. A delta is sent
when anything of these, or a change, happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from python_worker import StreamChunk

from .changes import ChangeTracker, Tolerance
from .readings import read_all
from .recent import RecentChanges
from .registry import MonitorRecord
from .sources.base import InstrumentSource, ParameterInfo

Choose = Callable[[list[ParameterInfo]], list[ParameterInfo]]
Tolerances = Callable[[list[ParameterInfo]], dict[str, Tolerance]]


@dataclass(frozen=True, slots=True)
class Schedule:
    poll_interval: float
    max_polls: int | None = None
    max_updates: int | None = None
    duration_s: float | None = None
    heartbeat_s: float | None = None


def run_monitor(
    source: InstrumentSource,
    params: Sequence[ParameterInfo],
    tracker: ChangeTracker,
    schedule: Schedule,
    record: MonitorRecord,
    *,
    sleep: Callable[[float], bool],
    cancelled: Callable[[], bool],
    choose: Choose | None = None,
    tolerances: Tolerances | None = None,
    recent: RecentChanges | None = None,
) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
    """Yield the update chunks of one monitor; ``record`` counts polls and updates and gets the end reason.

    ``sleep(seconds)`` returns False when the call was cancelled meanwhile (``ToolContext.sleep``). ``choose``
    selects the parameters to monitor among those a refreshed source lists (include/exclude), ``tolerances``
    gives the tolerances of new ones; ``recent`` records every change reported.
    """
    params = list(params)
    subscription = source.subscribe_sets()
    started = time.monotonic()
    end_at = None if schedule.duration_s is None else started + schedule.duration_s
    next_poll = started
    last_sent = started
    while True:
        # wait for the next poll, sending heartbeats that fall due meanwhile
        while True:
            now = time.monotonic()
            if end_at is not None and now >= end_at:
                yield _end(record, "duration")
                return
            due = [next_poll] + ([end_at] if end_at is not None else [])
            if schedule.heartbeat_s is not None and record.updates:
                heartbeat_at = last_sent + schedule.heartbeat_s
                if heartbeat_at <= now:
                    yield {
                        "type": "heartbeat",
                        "last_update_index": record.updates - 1,
                        "polls": record.polls,
                        "ts": time.time(),
                    }
                    last_sent = time.monotonic()
                    continue
                due.append(heartbeat_at)
            wake = min(due)
            if wake <= now:
                break
            if not sleep(wake - now):
                record.reason = "cancelled"
                return
        poll_index = record.polls
        added: list[ParameterInfo] = []
        removed: list[ParameterInfo] = []
        if poll_index and choose is not None and source.refresh():
            chosen = choose(source.parameters())
            before, after = {p.full_name for p in params}, {p.full_name for p in chosen}
            added = [p for p in chosen if p.full_name not in before]
            removed = [p for p in params if p.full_name not in after]
            if tolerances is not None:
                tracker.tolerances.update(tolerances(added))
            params = chosen
            record.parameters = len(params)
        poll_ts = time.time()
        readings = read_all(source, params, stop=cancelled)
        if readings is None:
            record.reason = "cancelled"
            return
        record.polls += 1
        if poll_index == 0:
            tracker.reset(readings)
            yield {
                "type": "snapshot",
                "update_index": 0,
                "poll_index": 0,
                "ts": poll_ts,
                "monitor_id": record.monitor_id,
                "source": record.source,
                "readings": [r.to_dict() for r in readings],
            }
            record.updates = 1
            last_sent = time.monotonic()
        else:
            new_names = {p.full_name for p in added}
            fresh = [r for r in readings if r.full_name in new_names]
            events = tracker.update([r for r in readings if r.full_name not in new_names])
            tracker.forget(p.full_name for p in removed)
            tracker.reported.update({r.full_name: r for r in fresh})
            sets, dropped = subscription.drain() if subscription is not None else ([], 0)
            watched = {p.full_name for p in params}
            sets = [e for e in sets if e.full_name in watched]
            if recent is not None:
                for event in events:
                    recent.add_change(record.monitor_id, event)
            if events or sets or fresh or removed or dropped:
                delta: dict[str, Any] = {
                    "type": "delta",
                    "update_index": record.updates,
                    "poll_index": poll_index,
                    "ts": poll_ts,
                    "changes": [e.to_dict() for e in events],
                    "sets": [e.to_dict() for e in sets],
                    "added": [r.to_dict() for r in fresh],
                    "removed": [p.full_name for p in removed],
                }
                if dropped:
                    delta["sets_dropped"] = dropped
                yield delta
                record.updates += 1
                last_sent = time.monotonic()
        if schedule.max_updates is not None and record.updates >= schedule.max_updates:
            yield _end(record, "max_updates")
            return
        if schedule.max_polls is not None and record.polls >= schedule.max_polls:
            yield _end(record, "max_polls")
            return
        next_poll += schedule.poll_interval
        now = time.monotonic()
        if next_poll < now:  # the poll overran its slot: start the next one now, skip the missed ones
            next_poll = now


def _end(record: MonitorRecord, reason: str) -> StreamChunk[Any]:
    record.reason = reason
    data = {"type": "end", "reason": reason, "polls": record.polls, "updates": record.updates, "ts": time.time()}
    return StreamChunk(data=data, is_final=True)
