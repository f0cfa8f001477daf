"""Simulated instruments: small stochastic models stepped once per poll, each with its own random stream.

Every model advances by one step per poll (``k`` counts polls, not seconds), so a seeded run gives the same values
at any poll interval and tests can predict them exactly. Each instrument draws a fixed number of random numbers
per step, so one instrument's history never depends on another's.

- :class:`Thermometer`: a random walk with drift, read at 0.1 mK resolution.
- :class:`Multimeter`: a noisy voltage whose mode (DC/AC, which also switches the unit V/Vrms) and range change
  rarely, as if someone touched the front panel; noise and resolution scale with the range.
- :class:`Qubit`: a transition frequency jittering around its mean (an Ornstein-Uhlenbeck process), read in Hz.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .base import ParameterInfo


class SimulatedInstrument(ABC):
    """One simulated instrument: its parameters, one step of its model, and its current values."""

    def __init__(self, name: str, rng: np.random.Generator) -> None:
        self.name = name
        self.rng = rng

    @abstractmethod
    def parameters(self) -> list[ParameterInfo]:
        """The parameters, with the units they start with."""

    @abstractmethod
    def step(self) -> None:
        """Advance the model by one poll."""

    @abstractmethod
    def value(self, parameter: str) -> tuple[Any, str]:
        """Current value and unit of ``parameter``."""

    def _info(self, parameter: str, unit: str, label: str) -> ParameterInfo:
        return ParameterInfo(self.name, parameter, unit, label)

    def _unknown(self, parameter: str) -> KeyError:
        return KeyError(f"{self.name} has no parameter {parameter!r}")


class Thermometer(SimulatedInstrument):
    """A cryostat thermometer slowly warming up.

    T_0 = start_k;  T_{k+1} = T_k + drift + sigma * eps_k,  eps_k ~ N(0, 1)
    temperature reads round(T_k, 4): the sensor resolves 0.1 mK, so small steps can read as no change.
    ``excitation`` (the sensor's bias current) is constant.
    """

    def __init__(
        self,
        name: str,
        rng: np.random.Generator,
        *,
        start_k: float = 4.0,
        drift_k: float = 2e-4,
        sigma_k: float = 1e-3,
        excitation_a: float = 1e-9,
    ) -> None:
        super().__init__(name, rng)
        self.temperature = start_k
        self.drift = drift_k
        self.sigma = sigma_k
        self.excitation = excitation_a

    def parameters(self) -> list[ParameterInfo]:
        return [self._info("temperature", "K", "Temperature"), self._info("excitation", "A", "Excitation current")]

    def step(self) -> None:
        self.temperature += self.drift + self.sigma * self.rng.standard_normal()

    def value(self, parameter: str) -> tuple[Any, str]:
        if parameter == "temperature":
            return round(self.temperature, 4), "K"
        if parameter == "excitation":
            return self.excitation, "A"
        raise self._unknown(parameter)


class Multimeter(SimulatedInstrument):
    """A 6-digit DMM measuring a fixed signal.

    Each step: with probability p_mode the mode flips DC <-> AC; with probability p_range the range hops to one of
    the other two ranges of RANGES (uniformly). Then
        v_k = signal(mode) + sigma_rel * range * eps_k,   eps_k ~ N(0, 1)
    read as round(v_k, 6 - log10(range)) (resolution = range * 1e-6), in V for DC and Vrms for AC.
    """

    RANGES = (0.1, 1.0, 10.0)
    SIGNAL = {"DC": 0.05, "AC": 0.0354}  # V and Vrms
    UNIT = {"DC": "V", "AC": "Vrms"}

    def __init__(
        self,
        name: str,
        rng: np.random.Generator,
        *,
        p_mode: float = 0.02,
        p_range: float = 0.02,
        sigma_rel: float = 2e-6,
    ) -> None:
        super().__init__(name, rng)
        self.mode = "DC"
        self.range = 1.0
        self.p_mode = p_mode
        self.p_range = p_range
        self.sigma_rel = sigma_rel
        self.voltage = self._measure()

    def parameters(self) -> list[ParameterInfo]:
        return [
            self._info("voltage", self.UNIT[self.mode], "Voltage"),
            self._info("mode", "", "Measurement mode"),
            self._info("range", "V", "Range"),
        ]

    def _measure(self) -> float:
        return self.SIGNAL[self.mode] + self.sigma_rel * self.range * self.rng.standard_normal()

    def step(self) -> None:
        # draw the same numbers every step, whatever happens, so the stream of draws stays aligned
        flip_mode, hop_range, pick = self.rng.random(), self.rng.random(), int(self.rng.integers(2))
        if flip_mode < self.p_mode:
            self.mode = "AC" if self.mode == "DC" else "DC"
        if hop_range < self.p_range:
            self.range = [r for r in self.RANGES if r != self.range][pick]
        self.voltage = self._measure()

    def value(self, parameter: str) -> tuple[Any, str]:
        if parameter == "voltage":
            digits = 6 - round(np.log10(self.range))
            return round(self.voltage, digits), self.UNIT[self.mode]
        if parameter == "mode":
            return self.mode, ""
        if parameter == "range":
            return self.range, "V"
        raise self._unknown(parameter)


class Qubit(SimulatedInstrument):
    """A superconducting qubit whose frequency jitters (two-level-system noise) around its mean.

    f_0 = mean;  f_{k+1} = f_k + theta * (mean - f_k) + sigma * eps_k,  eps_k ~ N(0, 1)
    (an Ornstein-Uhlenbeck process: stationary spread sigma / sqrt(theta * (2 - theta))), read to 1 Hz.
    ``flux_bias`` is constant.
    """

    def __init__(
        self,
        name: str,
        rng: np.random.Generator,
        *,
        mean_hz: float,
        theta: float = 0.1,
        sigma_hz: float = 5e3,
        flux_bias_v: float = 0.0,
    ) -> None:
        super().__init__(name, rng)
        self.mean = mean_hz
        self.frequency = mean_hz
        self.theta = theta
        self.sigma = sigma_hz
        self.flux_bias = flux_bias_v

    def parameters(self) -> list[ParameterInfo]:
        return [self._info("frequency", "Hz", "Qubit frequency"), self._info("flux_bias", "V", "Flux bias")]

    def step(self) -> None:
        self.frequency += self.theta * (self.mean - self.frequency) + self.sigma * self.rng.standard_normal()

    def value(self, parameter: str) -> tuple[Any, str]:
        if parameter == "frequency":
            return float(round(self.frequency)), "Hz"
        if parameter == "flux_bias":
            return self.flux_bias, "V"
        raise self._unknown(parameter)


def build_lab(seed: int) -> list[SimulatedInstrument]:
    """The simulated lab: a thermometer, a DMM and two qubits, each with an independent stream of ``seed``."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    return [
        Thermometer("thermometer", streams[0]),
        Multimeter("dmm", streams[1]),
        Qubit("q0", streams[2], mean_hz=5.1e9),
        Qubit("q1", streams[3], mean_hz=5.35e9, flux_bias_v=0.12),
    ]
