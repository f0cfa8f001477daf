"""IEC 61672-1 frequency weightings A, C and Z: the analytic curves and digital filters for time signals.

The standard defines the weightings by four pole frequencies (IEC 61672-1:2013, E.2):

    f1 = 20.598997 Hz, f2 = 107.65265 Hz, f3 = 737.86223 Hz, f4 = 12194.217 Hz

    R_C(f) = f4²·f² / ((f² + f1²)·(f² + f4²))
    R_A(f) = f4²·f⁴ / ((f² + f1²)·√((f² + f2²)·(f² + f3²))·(f² + f4²))

    C(f) = 20·log10 R_C(f) - 20·log10 R_C(1 kHz)      (the standard's C1000 = -0.062 dB)
    A(f) = 20·log10 R_A(f) - 20·log10 R_A(1 kHz)      (the standard's A1000 = -2.000 dB)
    Z(f) = 0 dB

so A and C are exactly 0 dB at 1 kHz. For time signals the same poles and zeros (A: four zeros at s = 0, double
poles at 2πf1 and 2πf4, single ones at 2πf2 and 2πf3; C: two zeros at 0, double poles at 2πf1 and 2πf4) are mapped
to a digital filter by the bilinear transform and normalised to 0 dB at 1 kHz. The bilinear transform compresses
the frequency axis near Nyquist, so the digital A and C curves fall short of the analytic ones at the top of the
band (at fs = 48 kHz: -0.1 dB at 5 kHz, -0.5 dB at 8 kHz, -1.2 dB at 10 kHz, -2.7 dB at 12.5 kHz); spectra and
octave bands use the analytic curve instead.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import signal as sps

from .levels import DB_FLOOR

Weighting = Literal["A", "C", "Z"]
WEIGHTINGS: tuple[str, ...] = ("A", "C", "Z")

F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217


def _r_a(f: np.ndarray) -> np.ndarray:
    f2 = f * f
    return F4**2 * f2 * f2 / ((f2 + F1**2) * np.sqrt((f2 + F2**2) * (f2 + F3**2)) * (f2 + F4**2))


def _r_c(f: np.ndarray) -> np.ndarray:
    f2 = f * f
    return F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2))


_A_1K = 20 * math.log10(float(_r_a(np.array(1000.0))))
_C_1K = 20 * math.log10(float(_r_c(np.array(1000.0))))


def weighting_db(name: str, frequencies_hz: np.ndarray | float) -> np.ndarray:
    """The weighting ``name`` ("A", "C" or "Z") in dB at each frequency; 0 Hz reads :data:`DB_FLOOR` for A and C."""
    f = np.asarray(frequencies_hz, dtype=np.float64)
    if name == "Z":
        return np.zeros_like(f)
    if name not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {name!r}")
    r, offset = (_r_a(f), _A_1K) if name == "A" else (_r_c(f), _C_1K)
    with np.errstate(divide="ignore"):
        return np.maximum(20 * np.log10(r) - offset, DB_FLOOR)


def weighting_sos(name: str, sample_rate: float) -> np.ndarray | None:
    """Second-order sections of the digital A or C weighting filter at ``sample_rate`` (None for Z)."""
    if name == "Z":
        return None
    if name not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {name!r}")
    w1, w2, w3, w4 = (2 * math.pi * f for f in (F1, F2, F3, F4))
    if name == "A":
        zeros, poles = [0.0] * 4, [-w1, -w1, -w2, -w3, -w4, -w4]
    else:
        zeros, poles = [0.0] * 2, [-w1, -w1, -w4, -w4]
    z, p, k = sps.bilinear_zpk(np.array(zeros), np.array(poles), 1.0, sample_rate)
    sos = sps.zpk2sos(z, p, k)
    _, h = sps.sosfreqz(sos, worN=[1000.0], fs=sample_rate)
    sos[0, :3] /= abs(h[0])  # 0 dB at 1 kHz
    return sos


class WeightingFilter:
    """Applies the A or C weighting to blocks of ``(frames, channels)`` samples, keeping the filter state."""

    def __init__(self, name: str, sample_rate: float, channels: int) -> None:
        self.name = name
        self._sos = weighting_sos(name, sample_rate)
        self._zi = None if self._sos is None else np.zeros((self._sos.shape[0], 2, channels))

    def process(self, block: np.ndarray) -> np.ndarray:
        if self._sos is None:
            return block
        y, self._zi = sps.sosfilt(self._sos, block, axis=0, zi=self._zi)
        return y
