"""InstrumentAdapter: a lab instrument monitor as Krait tools, in the spirit of quantify's instrument monitor.

``monitor`` polls instrument parameters and streams a ``snapshot`` of every reading first, then ``delta`` updates
that carry only the parameters that changed (beyond a tolerance), the QCoDeS sets made meanwhile and the
parameters that appeared or went away, optional ``heartbeat`` chunks while nothing changes, and an ``end``
chunk when it stops by itself. Unary tools list instruments and stations, read one parameter or a snapshot, set
a QCoDeS parameter, report the running monitors and the recent changes. Sources: a seeded simulated lab (runs
anywhere, exactly reproducible) and QCoDeS stations (the optional ``qcodes`` extra; station files only from the
worker's station directory, chosen by name). Chunk schemas are in docs/adapters/instrument.md.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import Field

from python_worker import BaseAdapter, StreamChunk, ToolContext, tool

from .changes import ChangeTracker, tolerances_for
from .filters import is_selected, select
from .monitor import Schedule, run_monitor
from .readings import read_all
from .recent import RecentChanges
from .registry import MonitorRegistry
from .source_spec import ReadMode, SourceKind, SourceSpec, open_source
from .sources.base import InstrumentSource, ParameterInfo
from .sources.qcodes_source import StationCache
from .stations import StationDirectory

log = logging.getLogger("krait.instrument")

Glob = Annotated[str, Field(min_length=1)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PollInterval = Annotated[float, Field(ge=0.001, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
Station = Annotated[
    str | None,
    Field(description="qcodes: a station name from the worker's station directory (null: the default station)"),
]


class InstrumentAdapter(BaseAdapter):
    """``station_dir``: the directory of QCoDeS station files callers may pick by name (default: the
    ``KRAIT_STATION_DIR`` environment variable; neither: no station files)."""

    def __init__(self, station_dir: str | os.PathLike[str] | None = None) -> None:
        # QCoDeS instruments loaded from station files, open for the worker's life
        self.stations = StationCache(StationDirectory(station_dir))
        self.registry = MonitorRegistry()
        self.recent = RecentChanges()
        self._hearing_sets = False

    def setup(self) -> None:
        if "qcodes" in sys.modules:  # a subclass built instruments already: record their sets from now on
            self._hear_sets()

    def close(self) -> None:
        self.stations.close()

    def _hear_sets(self) -> None:
        if not self._hearing_sets:
            from .sources.qcodes_sets import SET_HOOK

            SET_HOOK.listen(self.recent.add_set)
            self._hearing_sets = True

    def _open(
        self,
        source: SourceKind,
        seed: int | None = None,
        faults: list[str] | None = None,
        station: str | None = None,
        read_mode: ReadMode = "get",
    ) -> InstrumentSource:
        spec = SourceSpec(source, seed, tuple(faults or ()), station, read_mode)
        opened = open_source(spec, self.stations)
        if opened.kind == "qcodes":
            self._hear_sets()
        return opened

    # -- the stream -----------------------------------------------------------------------------------------
    @tool(supports_streaming=True)
    def monitor(
        self,
        poll_interval: PollInterval = 0.5,
        include: list[Glob] | None = None,
        exclude: list[Glob] | None = None,
        tolerance: NonNegative = 0.0,
        rel_tolerance: NonNegative = 0.0,
        tolerances: dict[Glob, NonNegative] | None = None,
        max_updates: Count | None = None,
        max_polls: Count | None = None,
        duration_s: Positive | None = None,
        heartbeat_s: Positive | None = None,
        source: SourceKind = "simulated",
        seed: Seed | None = None,
        faults: list[Glob] | None = None,
        station: Station = None,
        read_mode: ReadMode = "get",
        monitor_id: str = "",
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        """Poll instrument parameters: a snapshot of every reading, then deltas with the changes only."""
        ctx = ctx or ToolContext(tool_name="monitor", worker_id="local")
        src = self._open(source, seed, faults, station, read_mode)
        record = None
        reason = "cancelled"  # a generator closed at a yield (the caller went away) sees GeneratorExit
        try:
            params = select(src.parameters(), include, exclude)
            tracker = ChangeTracker(tolerances_for(params, tolerance, rel_tolerance, tolerances))
            schedule = Schedule(poll_interval, max_polls, max_updates, duration_s, heartbeat_s)
            record = self.registry.start(monitor_id, src.describe(), len(params))
            yield from run_monitor(
                src, params, tracker, schedule, record, sleep=ctx.sleep, cancelled=lambda: ctx.cancelled,
                choose=lambda found: [p for p in found if is_selected(p, include, exclude)],
                tolerances=lambda new: tolerances_for(new, tolerance, rel_tolerance, tolerances),
                recent=self.recent,
            )  # fmt: skip
        except GeneratorExit:
            raise
        except BaseException as exc:
            reason = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            closed = _close(src)
            if record is not None:
                self.registry.finish(record, reason, closed)

    # -- unary tools ----------------------------------------------------------------------------------------
    @tool
    def list_instruments(self, source: SourceKind = "simulated", station: Station = None) -> dict[str, Any]:
        """The instruments of a source and their parameters (name, full_name, unit, label)."""
        src = self._open(source, station=station)
        try:
            instruments: dict[str, list[dict[str, str]]] = {}
            for info in src.parameters():
                instruments.setdefault(info.instrument, []).append(info.to_dict())
            return {
                "source": src.describe(),
                "instruments": [{"name": name, "parameters": params} for name, params in instruments.items()],
            }
        finally:
            _close(src)

    @tool
    def snapshot(
        self,
        include: list[Glob] | None = None,
        exclude: list[Glob] | None = None,
        source: SourceKind = "simulated",
        seed: Seed | None = None,
        faults: list[Glob] | None = None,
        station: Station = None,
        read_mode: ReadMode = "get",
    ) -> dict[str, Any]:
        """Read every (selected) parameter once: {"type": "snapshot", "ts", "source", "readings"}."""
        src = self._open(source, seed, faults, station, read_mode)
        try:
            params = select(src.parameters(), include, exclude)
            ts = time.time()
            readings = read_all(src, params) or []
            return {"type": "snapshot", "ts": ts, "source": src.describe(), "readings": [r.to_dict() for r in readings]}
        finally:
            _close(src)

    @tool
    def read_parameter(
        self,
        full_name: str,
        source: SourceKind = "simulated",
        seed: Seed | None = None,
        faults: list[Glob] | None = None,
        station: Station = None,
        read_mode: ReadMode = "get",
    ) -> dict[str, Any]:
        """Read one parameter, named ``instrument_parameter`` or ``instrument.parameter``; returns a reading."""
        src = self._open(source, seed, faults, station, read_mode)
        try:
            info = _find(src, full_name)
            readings = read_all(src, [info]) or []
            return readings[0].to_dict()
        finally:
            _close(src)

    @tool
    def set_parameter(
        self,
        full_name: str,
        value: Any,
        source: SourceKind = "qcodes",
        station: Station = None,
        read_mode: ReadMode = "cache",
    ) -> dict[str, Any]:
        """Set a QCoDeS parameter (a running monitor then reports the set); returns the reading after it."""
        src = self._open(source, station=station, read_mode=read_mode)
        try:
            info = _find(src, full_name)
            src.set(info, value)
            readings = read_all(src, [info]) or []
            return readings[0].to_dict()
        finally:
            _close(src)

    @tool
    def list_stations(self) -> dict[str, Any]:
        """The station files callers may pick by name: {"directory": str or null, "stations": [name, ...]}."""
        directory = self.stations.directory
        return {
            "directory": None if directory.directory is None else str(directory.directory),
            "stations": directory.names(),
        }

    @tool
    def recent_changes(
        self,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        since_seq: Annotated[int | None, Field(ge=0)] = None,
        include: list[Glob] | None = None,
        exclude: list[Glob] | None = None,
    ) -> dict[str, Any]:
        """Recent QCoDeS sets and monitor changes, oldest first: the newest ``limit`` ones, or with
        ``since_seq`` the ``limit`` ones after it ({"changes", "last_seq", "more", "missed", "capacity"})."""
        return self.recent.recent(limit, since_seq, include, exclude)

    @tool
    def active_monitors(self) -> dict[str, Any]:
        """Monitors running in this worker ("active", "monitors") and how the last 50 ended ("finished")."""
        return self.registry.status()


def _find(src: InstrumentSource, name: str) -> ParameterInfo:
    params = src.parameters()
    for info in params:
        if name in (info.full_name, f"{info.instrument}.{info.parameter}"):
            return info
    names = [p.full_name for p in params]
    close = difflib.get_close_matches(name.replace(".", "_"), names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; parameters: {', '.join(names[:40])}"
    raise ValueError(f"unknown parameter {name!r} in the {src.kind} source{hint}")


def _close(src: InstrumentSource) -> bool:
    """Close a source; a failure is logged (it must not hide the error that ended the call)."""
    try:
        src.close()
        return True
    except Exception:
        log.exception("closing the %s source failed", src.kind)
        return False
