"""IEC 61672-1 frequency weightings A, C and Z: the analytic curves and digital filters for time signals.

The standard defines the weightings by four pole frequencies (IEC 61672-1:2013, E.2):

    f1 = 20.598997 Hz, f2 = 107.65265 Hz, f3 = 737.86223 Hz, f4 = 12194.217 Hz

    R_C(f) = f4²·f² / ((f² + f1²)·(f² + f4²))
    R_A(f) = f4²·f⁴ / ((f² + f1²)·√((f² + f2²)·(f² + f3²))·(f² + f4²))

    C(f) = 20·log10 R_C(f) - 20·log10 R_C(1 kHz)      (the standard's C1000 = -0.062 dB)
    A(f) = 20·log10 R_A(f) - 20·log10 R_A(1 kHz)      (the standard's A1000 = -2.000 dB)
    Z(f) = 0 dB

so A and C are exactly 0 dB at 1 kHz. Spectra use these curves directly.

The digital filters for time signals (levels, octave bands) are built in two parts, because a plain bilinear
transform of the whole analogue filter reads low near Nyquist (at 48 kHz: -1.2 dB at 10 kHz, -2.8 dB at
12.5 kHz, -6.2 dB at 16 kHz; the two excess poles become zeros at Nyquist):

1. The high-pass part — A: four zeros at s = 0, poles at 2πf1 (double), 2πf2, 2πf3; C: two zeros at 0, the
   double pole at 2πf1 — by the bilinear transform. Its corners lie below 1 kHz, where frequency warping is
   negligible (the 737.9 Hz pole errs by < 0.01 dB at 16 kHz).
2. The low-pass part, the double pole at f4 (12.2 kHz, where warping matters), as a matched-z double pole
   z = e^(-2π·f4/fs) with a 6th-order FIR numerator fitted so that the whole filter's power response matches
   the analytic curve up to min(20 kHz, 0.98·fs/2). The fit is linear: |B(e^jω)|² = r0 + 2·Σ r_k·cos(kω) is
   linear in the numerator's autocorrelation r, solved by weighted least squares (relative error), then B is
   recovered by spectral factorisation (the roots of the symmetric polynomial inside the unit circle: minimum
   phase). A pre-warped or oversampled bilinear design would still err by ~0.4 dB at 16 kHz unless oversampled
   8x; the fit costs nothing per sample.

Measured (tests/adapters/test_audio_kernels.py): within 0.01 dB of the analytic curves from 10 Hz to 16 kHz at
44.1 and 48 kHz (0.1 dB required). The filter is normalised to 0 dB at 1 kHz. Designs are cached per rate.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
from scipy import signal as sps

from .levels import DB_FLOOR

Weighting = Literal["A", "C", "Z"]
WEIGHTINGS: tuple[str, ...] = ("A", "C", "Z")

F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217
_FIT_ORDER = 6  # FIR numerator of the f4 section: 0.01 dB at 44.1/48 kHz (order 4: 0.03 dB; order 2: 0.11 dB)
_FIT_POINTS = 400


def _r_a(f: np.ndarray) -> np.ndarray:
    f2 = f * f
    return F4**2 * f2 * f2 / ((f2 + F1**2) * np.sqrt((f2 + F2**2) * (f2 + F3**2)) * (f2 + F4**2))


def _r_c(f: np.ndarray) -> np.ndarray:
    f2 = f * f
    return F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2))


_A_1K = 20 * math.log10(float(_r_a(np.array(1000.0))))
_C_1K = 20 * math.log10(float(_r_c(np.array(1000.0))))


def _check(name: str) -> None:
    if name not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {name!r}")


def weighting_db(name: str, frequencies_hz: np.ndarray | float) -> np.ndarray:
    """The weighting ``name`` ("A", "C" or "Z") in dB at each frequency; 0 Hz reads :data:`DB_FLOOR` for A and C."""
    _check(name)
    f = np.asarray(frequencies_hz, dtype=np.float64)
    if name == "Z":
        return np.zeros_like(f)
    r, offset = (_r_a(f), _A_1K) if name == "A" else (_r_c(f), _C_1K)
    with np.errstate(divide="ignore"):
        return np.maximum(20 * np.log10(r) - offset, DB_FLOOR)


def _high_pass_sos(name: str, sample_rate: float) -> np.ndarray:
    w1, w2, w3 = (2 * math.pi * f for f in (F1, F2, F3))
    zeros, poles = ([0.0] * 4, [-w1, -w1, -w2, -w3]) if name == "A" else ([0.0] * 2, [-w1, -w1])
    z, p, k = sps.bilinear_zpk(np.array(zeros), np.array(poles), 1.0, sample_rate)
    return sps.zpk2sos(z, p, k)


def _f4_section(name: str, sample_rate: float, high_pass: np.ndarray) -> np.ndarray:
    """SOS of the matched double pole at f4 with the fitted FIR numerator (see the module doc)."""
    f = np.linspace(0.0, min(20000.0, 0.98 * sample_rate / 2), _FIT_POINTS)
    f[0] = 1.0  # the weightings are -inf at DC; 1 Hz stands for the low end
    _, h_high = sps.sosfreqz(high_pass, worN=f, fs=sample_rate)
    analytic = _r_a(f) if name == "A" else _r_c(f)
    target = (analytic / np.maximum(np.abs(h_high), 1e-300)) ** 2  # the power the f4 section must supply
    omega = 2 * math.pi * f / sample_rate
    pole = math.exp(-2 * math.pi * F4 / sample_rate)
    denominator = np.array([1.0, -2 * pole, pole * pole])
    a_power = np.abs(denominator[0] + denominator[1] * np.exp(-1j * omega) + denominator[2] * np.exp(-2j * omega)) ** 2
    wanted = target * a_power  # |B|² must equal this
    basis = np.column_stack([np.ones_like(omega)] + [2 * np.cos(k * omega) for k in range(1, _FIT_ORDER + 1)])
    weight = 1.0 / wanted  # relative error: every frequency counts alike in dB
    r, *_ = np.linalg.lstsq(basis * weight[:, None], wanted * weight, rcond=None)
    # spectral factorisation: z^n·R(z) has roots in pairs (z0, 1/z0); B takes the n inside the unit circle
    roots = np.roots(np.concatenate([r[::-1], r[1:]]))
    b = np.real(np.poly(roots[np.argsort(np.abs(roots))[:_FIT_ORDER]]))
    b *= math.sqrt(max(float(r[0] + 2 * r[1:].sum()), 0.0)) / abs(b.sum())  # |B(1)|² = R(0)
    z, p, k = sps.tf2zpk(b, np.concatenate([denominator, np.zeros(_FIT_ORDER - 2)]))
    return sps.zpk2sos(z, p, k)


@functools.lru_cache(maxsize=32)
def _design(name: str, sample_rate: float) -> np.ndarray:
    high_pass = _high_pass_sos(name, sample_rate)
    sos = np.vstack([high_pass, _f4_section(name, sample_rate, high_pass)])
    _, h = sps.sosfreqz(sos, worN=[1000.0], fs=sample_rate)
    sos[0, :3] /= abs(h[0])  # 0 dB at 1 kHz
    return sos


def weighting_sos(name: str, sample_rate: float) -> np.ndarray | None:
    """Second-order sections of the digital A or C weighting filter at ``sample_rate`` (None for Z)."""
    _check(name)
    if name == "Z":
        return None
    if sample_rate < 2000:
        raise ValueError(f"A and C weighting need a sample rate of at least 2000 Hz, got {sample_rate}")
    return _design(name, float(sample_rate)).copy()


class WeightingFilter:
    """Applies the A or C weighting to blocks of ``(frames, channels)`` samples, keeping the filter state."""

    def __init__(self, name: str, sample_rate: float, channels: int) -> None:
        self.name = name
        self._sos = weighting_sos(name, sample_rate)
        self._zi = None if self._sos is None else np.zeros((self._sos.shape[0], 2, channels))

    def process(self, block: np.ndarray) -> np.ndarray:
        if self._sos is None or len(block) == 0:
            return block
        y, self._zi = sps.sosfilt(self._sos, block, axis=0, zi=self._zi)
        return y
