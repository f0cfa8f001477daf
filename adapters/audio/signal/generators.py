"""Test signals generated block by block with continuous phase: sine, white noise, exponential sweep, silence.

- sine of frequency f and amplitude A:   x[n] = A·sin(φ[n]),  φ[n] = 2π·f·n/fs
- exponential (log) sweep from f1 to f2 over T seconds, then again from f1 (Farina's sweep):
      φ(t) = 2π·f1·T/ln(f2/f1) · (e^{t·ln(f2/f1)/T} - 1),   instantaneous frequency f(t) = f1·(f2/f1)^{t/T}
- white noise: Gaussian with standard deviation s (its RMS), clipped to ±1, from a seeded generator.

Levels: ``level_dbfs`` is the peak amplitude A = 10^(level/20) for the sine and the sweep (0 dBFS is a full-scale
sine, -3.01 dBFS RMS) and the RMS s = 10^(level/20) for noise.
"""

from __future__ import annotations

import math

import numpy as np

KINDS: tuple[str, ...] = ("sine", "noise", "sweep", "silence")


class SignalGenerator:
    """Generates ``kind`` at ``sample_rate``; ``next(frames)`` returns the following ``frames`` samples (1-D)."""

    def __init__(
        self,
        kind: str,
        sample_rate: float,
        *,
        frequency_hz: float = 440.0,
        level_dbfs: float = -6.0,
        end_frequency_hz: float = 8000.0,
        sweep_s: float = 5.0,
        seed: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"signal kind must be one of {', '.join(KINDS)}, got {kind!r}")
        nyquist = sample_rate / 2
        if kind in ("sine", "sweep") and not 0 < frequency_hz < nyquist:
            raise ValueError(
                f"signal frequency_hz must be in (0, {nyquist}) Hz at {sample_rate} Hz, got {frequency_hz}"
            )
        if kind == "sweep":
            if not 0 < end_frequency_hz < nyquist:
                raise ValueError(f"signal end_frequency_hz must be in (0, {nyquist}) Hz, got {end_frequency_hz}")
            if end_frequency_hz == frequency_hz:
                raise ValueError("a sweep needs end_frequency_hz different from frequency_hz")
            if sweep_s <= 0:
                raise ValueError(f"signal sweep_s must be > 0, got {sweep_s}")
        if level_dbfs > 20:
            raise ValueError(f"signal level_dbfs must be <= 20 dBFS, got {level_dbfs}")
        self.kind = kind
        self.sample_rate = float(sample_rate)
        self.frequency_hz = frequency_hz
        self.end_frequency_hz = end_frequency_hz
        self.sweep_s = sweep_s
        self.amplitude = 10.0 ** (level_dbfs / 20.0)
        self._n = 0  # samples generated so far
        self._rng = np.random.default_rng(seed)

    def next(self, frames: int) -> np.ndarray:
        n = self._n + np.arange(frames)
        self._n += frames
        if self.kind == "sine":
            # reducing n modulo one period keeps sin's argument small: no phase drift however long the stream runs
            period = self.sample_rate / self.frequency_hz
            return self.amplitude * np.sin(2 * math.pi * np.mod(n, period) / period)
        if self.kind == "sweep":
            t = np.mod(n, round(self.sweep_s * self.sample_rate)) / self.sample_rate
            k = math.log(self.end_frequency_hz / self.frequency_hz)
            phase = 2 * math.pi * self.frequency_hz * self.sweep_s / k * np.expm1(t * k / self.sweep_s)
            return self.amplitude * np.sin(phase)
        if self.kind == "noise":
            return np.clip(self._rng.standard_normal(frames) * self.amplitude, -1.0, 1.0)
        return np.zeros(frames)

    def instantaneous_frequency(self, t: float) -> float:
        """The sweep's frequency at time t (s) of the stream: f1·(f2/f1)^{(t mod T)/T}; the sine's frequency."""
        if self.kind != "sweep":
            return self.frequency_hz
        return self.frequency_hz * (self.end_frequency_hz / self.frequency_hz) ** ((t % self.sweep_s) / self.sweep_s)
