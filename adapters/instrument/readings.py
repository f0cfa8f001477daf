"""Readings and change events, and how a poll produces readings.

A :class:`Reading` is one parameter's value at one moment: instrument, parameter, full_name (QCoDeS style
``instrument_parameter``), value, unit, ts (unix seconds) and error. A read that raises does not end the stream:
it becomes a reading with ``value=None`` and ``error="ExceptionType: message"``.

Values are made JSON-friendly as they are read: NumPy scalars become Python numbers, arrays and tuples become
lists, complex numbers ``{"real": x, "imag": y}``, anything else unknown its ``str()``. A NaN or infinite
reading becomes None (null): JSON has no such numbers, and Krait refuses them in a chunk rather than guess; for
an instrument, "no finite value" is what null means here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sources.base import InstrumentSource, ParameterInfo


@dataclass(frozen=True, slots=True)
class Reading:
    instrument: str
    parameter: str
    full_name: str
    value: Any
    unit: str
    ts: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "parameter": self.parameter,
            "full_name": self.full_name,
            "value": self.value,
            "unit": self.unit,
            "ts": self.ts,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """``reading`` differs from ``previous`` (the last reading reported for it) in ``changed_fields``."""

    reading: Reading
    changed_fields: tuple[str, ...]
    previous: Reading

    def to_dict(self) -> dict[str, Any]:
        prev = self.previous
        return {
            "reading": self.reading.to_dict(),
            "changed_fields": list(self.changed_fields),
            "previous": {"value": prev.value, "unit": prev.unit, "error": prev.error, "ts": prev.ts},
            "ts": self.reading.ts,
        }


def normalize_value(value: Any) -> Any:
    """A JSON-friendly copy of ``value`` (see the module docstring)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, np.ndarray):
        return normalize_value(value.tolist())
    if isinstance(value, np.generic):
        return normalize_value(value.item())
    if isinstance(value, complex):
        return {"real": normalize_value(value.real), "imag": normalize_value(value.imag)}
    if isinstance(value, (list, tuple)):
        return [normalize_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): normalize_value(v) for k, v in value.items()}
    return str(value)


def read_all(
    source: InstrumentSource,
    params: Sequence[ParameterInfo],
    *,
    clock: Callable[[], float] = time.time,
    stop: Callable[[], bool] = lambda: False,
) -> list[Reading] | None:
    """One poll: every parameter in order, each stamped when its read returned.

    Returns None if ``stop()`` turned true between two reads (the call was cancelled mid-poll).
    """
    source.begin_poll()
    readings = []
    for info in params:
        if stop():
            return None
        try:
            raw, unit = source.read(info)
            value, error = normalize_value(raw), None
        except Exception as exc:  # an instrument error belongs to its reading, not to the whole stream
            value, unit, error = None, info.unit, f"{type(exc).__name__}: {exc}"
        readings.append(Reading(info.instrument, info.parameter, info.full_name, value, unit, clock(), error))
    return readings
