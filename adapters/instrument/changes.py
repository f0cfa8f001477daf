"""Change detection: which new readings are events worth sending.

A reading is compared with the last reading *reported* for the same parameter (not the last one read), so a slow
drift below the tolerance per poll is still reported once it has added up. Fields compared, in this order:

- ``value``: numbers (int or float, not bool) change when
      |x_new - x_ref| > max(tol_abs, tol_rel * |x_ref|)
  (like ``math.isclose`` but measured from the reference). NaN equals NaN; an infinity changes unless equal.
  Anything else (str, bool, None, lists, dicts) changes when its JSON encoding changes, so a number turning
  into None, or a bool into an int, is a change.
- ``unit``: changes on inequality.
- ``error``: changes on inequality (an instrument starting or stopping to fail is an event).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .filters import first_match
from .readings import ChangeEvent, Reading
from .sources.base import ParameterInfo

FIELDS = ("value", "unit", "error")


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far a number may move from its last reported value without being an event."""

    absolute: float = 0.0
    relative: float = 0.0

    def __post_init__(self) -> None:
        for name in ("absolute", "relative"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"tolerance {name} must be a finite number >= 0, got {v!r}")

    def within(self, ref: float, new: float) -> bool:
        """True when ``new`` is close enough to ``ref`` not to count as a change."""
        if ref == new or (math.isnan(ref) and math.isnan(new)):
            return True
        if not (math.isfinite(ref) and math.isfinite(new)):
            return False
        return abs(new - ref) <= max(self.absolute, self.relative * abs(ref))


EXACT = Tolerance()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _encoded(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # integers beyond 64 bits: the standard library keeps them exact
        return json.dumps(value, sort_keys=True, default=str).encode()


def value_changed(ref: Any, new: Any, tolerance: Tolerance = EXACT) -> bool:
    if is_number(ref) and is_number(new):
        return not tolerance.within(ref, new)
    if type(ref) is type(new) and ref == new:
        return False
    return _encoded(ref) != _encoded(new)


def changed_fields(ref: Reading, new: Reading, tolerance: Tolerance = EXACT) -> tuple[str, ...]:
    """The fields of ``new`` that differ from ``ref``, in the order of FIELDS."""
    out = []
    if value_changed(ref.value, new.value, tolerance):
        out.append("value")
    if ref.unit != new.unit:
        out.append("unit")
    if ref.error != new.error:
        out.append("error")
    return tuple(out)


def tolerances_for(
    params: Iterable[ParameterInfo],
    absolute: float = 0.0,
    relative: float = 0.0,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, Tolerance]:
    """Each parameter's tolerance by full name: ``absolute`` unless a pattern of ``overrides`` matches it (the
    first matching pattern, in the mapping's order, gives its absolute tolerance); ``relative`` applies to all."""
    out = {}
    for info in params:
        specific = first_match(info, overrides or {})
        out[info.full_name] = Tolerance(absolute if specific is None else specific, relative)
    return out


class ChangeTracker:
    """The last reported reading of every parameter, and the events a new poll makes of it."""

    def __init__(self, tolerances: Mapping[str, Tolerance] | None = None) -> None:
        self.tolerances = dict(tolerances or {})
        self.reported: dict[str, Reading] = {}

    def reset(self, readings: Sequence[Reading]) -> None:
        """Take a snapshot's readings as the reference for what follows."""
        self.reported = {r.full_name: r for r in readings}

    def update(self, readings: Sequence[Reading]) -> list[ChangeEvent]:
        """Events for the readings that changed; those become the new reference."""
        events = []
        for new in readings:
            ref = self.reported.get(new.full_name)
            if ref is None:  # a parameter never seen before is compared with an empty reading
                ref = Reading(new.instrument, new.parameter, new.full_name, None, "", new.ts, None)
            fields = changed_fields(ref, new, self.tolerances.get(new.full_name, EXACT))
            if fields:
                events.append(ChangeEvent(new, fields, ref))
                self.reported[new.full_name] = new
        return events

    def forget(self, full_names: Iterable[str]) -> None:
        """Drop parameters that went away."""
        for name in full_names:
            self.reported.pop(name, None)

    def current(self) -> list[Reading]:
        """The last reported reading of every parameter."""
        return list(self.reported.values())
