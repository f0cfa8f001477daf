"""Which source a call asked for, and opening it.

The simulated source is built fresh for every call from its seed (a random seed, reported back, when none is
given). QCoDeS instruments are worker-wide: their stations live in a :class:`StationCache` owned by the adapter
(station files only from the worker's station directory, by name), and the QCoDeS source module is imported
only when asked for.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .sources.base import InstrumentSource

SourceKind = Literal["simulated", "qcodes"]
ReadMode = Literal["get", "cache"]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: SourceKind = "simulated"
    seed: int | None = None
    faults: Sequence[str] = field(default_factory=tuple)
    station: str | None = None
    read_mode: ReadMode = "get"

    def check(self) -> None:
        """Reject options given to the wrong source (they would be silently ignored otherwise)."""
        if self.kind != "simulated" and (self.seed is not None or self.faults):
            raise ValueError(f"seed and faults are options of source='simulated', not of source={self.kind!r}")
        if self.kind != "qcodes" and self.station is not None:
            raise ValueError(f"station is an option of source='qcodes', not of source={self.kind!r}")


def open_source(spec: SourceSpec, stations: Any) -> InstrumentSource:
    """Open the source ``spec`` names; ``stations`` is the worker's StationCache (used for QCoDeS only)."""
    spec.check()
    if spec.kind == "simulated":
        from .sources.simulated import SimulatedSource

        seed = secrets.randbelow(2**31) if spec.seed is None else spec.seed
        return SimulatedSource(seed, spec.faults)
    if spec.kind == "qcodes":
        from .sources.qcodes_source import QcodesSource

        return QcodesSource(stations.instruments(spec.station), read_mode=spec.read_mode, station=spec.station)
    raise ValueError(f"unknown source {spec.kind!r}; sources: simulated, qcodes")
