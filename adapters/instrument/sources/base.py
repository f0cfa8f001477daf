"""The instrument source interface: what the monitor needs from any set of instruments.

A source lists its parameters (instrument, parameter name, unit) and reads one value at a time. The simulated lab
and QCoDeS stations both implement it, so the monitor's polling, filtering and change detection never know which
kind of instrument they talk to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ParameterInfo:
    """One readable parameter. ``full_name`` follows QCoDeS: ``instrument_parameter``."""

    instrument: str
    parameter: str
    unit: str = ""
    label: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.instrument}_{self.parameter}"

    def to_dict(self) -> dict[str, str]:
        return {"parameter": self.parameter, "full_name": self.full_name, "unit": self.unit, "label": self.label}


class InstrumentSource(ABC):
    """A set of instruments the monitor can poll.

    The monitor calls :meth:`refresh` before every poll but the first, :meth:`begin_poll` once at the start of
    every poll, then :meth:`read` for each selected parameter, and :meth:`close` once when it stops (whatever the
    reason). ``read`` may raise: the monitor turns
    the exception into the reading's ``error`` field and carries on.
    """

    kind: str = ""

    @abstractmethod
    def parameters(self) -> list[ParameterInfo]:
        """Every parameter this source can read, in a stable order."""

    def begin_poll(self) -> None:
        """Called at the start of each poll (the simulated lab advances its clock here); nothing by default."""
        return None

    def refresh(self) -> bool:
        """List the instruments again (before each poll but the first); True when the parameters changed.
        Sources whose instruments never change (the default) return False."""
        return False

    def subscribe_sets(self) -> Any:
        """A subscription to the sets made in this process (``drain()`` -> (events, dropped)), or None when the
        source has no such notification (the default)."""
        return None

    @abstractmethod
    def read(self, info: ParameterInfo) -> tuple[Any, str]:
        """Read one parameter now: its value and its unit at this moment (a unit may change with a mode)."""

    def set(self, info: ParameterInfo, value: Any) -> None:
        """Set a parameter (sources that cannot say why)."""
        raise ValueError(f"the {self.kind} source cannot set parameters")

    def describe(self) -> dict[str, Any]:
        """What this source is, for the snapshot chunk (e.g. the seed of a simulation)."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release what this source holds for one call; nothing by default."""
        return None

    def __enter__(self) -> InstrumentSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
