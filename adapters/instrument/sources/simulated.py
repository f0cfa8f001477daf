"""The simulated source: a seeded lab (thermometer, DMM, two qubits) that runs anywhere.

Each call of a tool gets its own lab built from its seed; poll 0 reads the initial state and every later poll
first advances every instrument by one step (see ``simulated_models``). ``faults`` names parameters (glob
patterns, matched like include/exclude) whose reads raise :class:`SimulatedInstrumentError`, to show how an
instrument error travels: as the reading's ``error`` field, not as the end of the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..filters import matches
from .base import InstrumentSource, ParameterInfo
from .simulated_models import SimulatedInstrument, build_lab


class SimulatedInstrumentError(RuntimeError):
    """A simulated instrument failed to answer (asked for with ``faults``)."""


class SimulatedSource(InstrumentSource):
    kind = "simulated"

    def __init__(self, seed: int, faults: Sequence[str] = ()) -> None:
        self.seed = seed
        self.faults = list(faults)
        self.instruments: dict[str, SimulatedInstrument] = {inst.name: inst for inst in build_lab(seed)}
        self.polls = 0

    def parameters(self) -> list[ParameterInfo]:
        return [info for inst in self.instruments.values() for info in inst.parameters()]

    def begin_poll(self) -> None:
        if self.polls:
            for inst in self.instruments.values():
                inst.step()
        self.polls += 1

    def read(self, info: ParameterInfo) -> tuple[Any, str]:
        if any(matches(pattern, info) for pattern in self.faults):
            raise SimulatedInstrumentError(f"{info.full_name}: no answer from {info.instrument} (simulated fault)")
        try:
            inst = self.instruments[info.instrument]
        except KeyError:
            raise KeyError(f"no simulated instrument {info.instrument!r}") from None
        return inst.value(info.parameter)

    def set(self, info: ParameterInfo, value: Any) -> None:
        raise ValueError("the simulated source is read-only: every call runs its own seeded lab")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "faults": self.faults}
