"""Levels in dBFS: conversions, IEC 61672 exponential time weighting and peak hold.

dBFS here is relative to a full-scale amplitude of 1.0:

    L_rms  = 10·log10(mean(x²))        a full-scale sine: 10·log10(1/2) = -3.01 dBFS
    L_peak = 20·log10(max |x|)         a full-scale sine: 0 dBFS

IEC 61672-1 exponential time weighting (Fast τ = 125 ms, Slow τ = 1 s) is a first-order low-pass on x²:

    L_τ(t) = 10·log10( (1/τ) ∫ x²(ξ) e^{-(t-ξ)/τ} dξ )

which, sampled at fs, is the one-pole recursion

    y[n] = a·y[n-1] + (1-a)·x²[n],     a = e^{-1/(τ·fs)}

After a step from silence the level reaches 10·log10(1 - e^{-1}) = -1.99 dB (re. the final level) at t = τ;
after the signal stops it decays at 10·log10(e)/τ dB/s (34.7 dB/s Fast, 4.3 dB/s Slow).

The time-weighted maximum of an interval (LAFmax, LASmax, ...) is the largest value y[n] takes at any sample
of the interval, not the value at its end, so no reporting rate under-reads a transient: a tone burst of
duration Tb reads 10·log10(1 - e^{-Tb/τ}) dB re. the steady level (IEC 61672-1 Table 4: -1.0 dB Fast and
-7.4 dB Slow for 200 ms). The peak (LZpeak, LCpeak, ...) is the largest |x[n]| of the frequency-weighted
signal, without time weighting.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from scipy import signal as sps

DB_FLOOR = -120.0
"""Lowest level reported (dB): stands for silence, because -inf cannot travel in JSON."""

TIME_CONSTANTS_S: dict[str, float] = {"fast": 0.125, "slow": 1.0}
"""IEC 61672-1 exponential time constants, seconds."""


def power_to_db(power: np.ndarray | float, floor: float = DB_FLOOR) -> np.ndarray:
    """10·log10(power), clamped below at ``floor`` (power is a mean square, full scale 1.0)."""
    p = np.asarray(power, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(np.maximum(p, 0.0)), floor)


def amplitude_to_db(amplitude: np.ndarray | float, floor: float = DB_FLOOR) -> np.ndarray:
    """20·log10(|amplitude|), clamped below at ``floor``."""
    a = np.abs(np.asarray(amplitude, dtype=np.float64))
    with np.errstate(divide="ignore"):
        return np.maximum(20.0 * np.log10(a), floor)


def rms_db(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """RMS level in dBFS along ``axis`` (10·log10 of the mean square)."""
    return power_to_db(np.mean(np.square(x, dtype=np.float64), axis=axis))


class ExponentialAverager:
    """The IEC 61672 exponential average of x² for several signals at once (one column each), kept across blocks.

    ``process(block)`` takes ``(frames, columns)`` *squared* values and returns the running mean square after each
    sample; ``value`` is the mean square after the last sample.
    """

    def __init__(self, time_constant_s: float, sample_rate: float, columns: int) -> None:
        if time_constant_s <= 0:
            raise ValueError(f"time constant must be > 0 s, got {time_constant_s}")
        self.alpha = math.exp(-1.0 / (time_constant_s * sample_rate))
        self._b = np.array([1.0 - self.alpha])
        self._a = np.array([1.0, -self.alpha])
        self._zi = np.zeros((1, columns))
        self.value = np.zeros(columns)

    def process(self, squared: np.ndarray) -> np.ndarray:
        if len(squared) == 0:  # a decimated stage can receive no sample from a short block
            return squared
        y, self._zi = sps.lfilter(self._b, self._a, squared, axis=0, zi=self._zi)
        self.value = y[-1].copy()
        return y


class PeakHold:
    """The highest peak of the last ``hold_s`` seconds, per channel, by the time each peak occurred.

    ``add(peaks, times)`` records each channel's peak amplitude and the time (s) it occurred; ``held(t)`` is the
    highest one that occurred within ``hold_s`` before ``t``. Each channel keeps a monotonic queue (times
    increasing, amplitudes decreasing: a peak can never matter again once a later one is at least as high), so
    a quieter click still inside the window takes over when a louder, older one expires.
    """

    def __init__(self, hold_s: float, columns: int) -> None:
        if hold_s < 0:
            raise ValueError(f"peak_hold_s must be >= 0, got {hold_s}")
        self.hold_s = hold_s
        self._queues: list[deque[tuple[float, float]]] = [deque() for _ in range(columns)]

    def add(self, peaks: np.ndarray, times: np.ndarray) -> None:
        for queue, peak, t in zip(self._queues, peaks, times, strict=True):
            while queue and queue[-1][1] <= peak:
                queue.pop()
            queue.append((float(t), float(peak)))

    def held(self, t: float) -> np.ndarray:
        out = np.zeros(len(self._queues))
        for i, queue in enumerate(self._queues):
            while queue and t - queue[0][0] > self.hold_s + 1e-12:
                queue.popleft()
            if queue:
                out[i] = queue[0][1]
        return out
