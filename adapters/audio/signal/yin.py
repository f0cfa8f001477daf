"""YIN fundamental-frequency estimation (A. de Cheveigné, H. Kawahara, "YIN, a fundamental frequency estimator
for speech and music", JASA 111(4), 2002).

For a frame x of W + τmax samples:

1. difference function       d(τ) = Σ_{j=0}^{W-1} (x_j - x_{j+τ})²
                                  = E(0) + E(τ) - 2·r(τ)
   with E(τ) = Σ_{j<W} x_{j+τ}² (from a cumulative sum) and r(τ) = Σ_{j<W} x_j·x_{j+τ} (a cross-correlation,
   computed with one FFT product in O(N log N) instead of O(W·τmax));
2. cumulative mean normalised difference
                             d'(0) = 1,   d'(τ) = d(τ) / ((1/τ)·Σ_{k=1}^{τ} d(k))
   which removes the dip at τ = 0 and scales d' so that 0 means a perfect period;
3. absolute threshold: the first τ in [τmin, τmax] with d'(τ) < threshold, followed down to its local minimum
   (the smallest such τ avoids octave errors); if no τ qualifies, the global minimum;
4. parabolic interpolation of d' around that τ: τ* = τ + ½(d'[τ-1] - d'[τ+1]) / (d'[τ-1] - 2d'[τ] + d'[τ+1]).

f0 = fs / τ*, and the confidence is 1 - d'(τ*) clipped to [0, 1] (1 for a pure periodic signal, ~0 for noise).
τmin = ⌊fs/fmax⌋, τmax = ⌈fs/fmin⌉.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft


@dataclass(frozen=True, slots=True)
class YinResult:
    frequency_hz: float
    confidence: float


def lag_range(sample_rate: float, fmin: float, fmax: float) -> tuple[int, int]:
    """(τmin, τmax) in samples for fundamental frequencies between fmin and fmax."""
    if not 0 < fmin < fmax:
        raise ValueError(f"need 0 < fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if fmax >= sample_rate / 2:
        raise ValueError(f"fmax ({fmax} Hz) must be below half the sample rate ({sample_rate / 2} Hz)")
    return max(2, math.floor(sample_rate / fmax)), math.ceil(sample_rate / fmin)


def difference_function(x: np.ndarray, window: int, tau_max: int) -> np.ndarray:
    """d(τ) for τ = 0 … τmax over the first ``window`` samples (x holds at least window + τmax samples)."""
    x = np.asarray(x[: window + tau_max], dtype=np.float64)
    if len(x) < window + tau_max:
        raise ValueError(f"YIN needs {window + tau_max} samples, got {len(x)}")
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    taus = np.arange(tau_max + 1)
    e_tau = energy[taus + window] - energy[taus]
    size = sfft.next_fast_len(len(x) + window)
    r = sfft.irfft(sfft.rfft(x, size) * np.conj(sfft.rfft(x[:window], size)), size)[: tau_max + 1]
    d = energy[window] + e_tau - 2.0 * r
    d[0] = 0.0
    return np.maximum(d, 0.0)  # rounding can leave tiny negatives


def cumulative_mean_normalized(d: np.ndarray) -> np.ndarray:
    """d'(τ) = d(τ)·τ / Σ_{k=1}^{τ} d(k), d'(0) = 1 (1 where the running sum is 0, e.g. silence)."""
    out = np.ones_like(d)
    running = np.cumsum(d[1:])
    taus = np.arange(1, len(d))
    safe = running > 0
    out[1:][safe] = d[1:][safe] * taus[safe] / running[safe]
    return out


def yin(
    frame: np.ndarray, sample_rate: float, fmin: float = 50.0, fmax: float = 2000.0, threshold: float = 0.15
) -> YinResult:
    """Estimate the fundamental frequency of the 1-D ``frame``: at least 2·τmax samples (W ≥ τmax)."""
    tau_min, tau_max = lag_range(sample_rate, fmin, fmax)
    window = len(frame) - tau_max
    if window < tau_max:
        raise ValueError(f"YIN frame of {len(frame)} samples is too short for fmin={fmin} Hz: need {2 * tau_max}")
    dn = cumulative_mean_normalized(difference_function(frame, window, tau_max))
    below = np.nonzero(dn[tau_min : tau_max + 1] < threshold)[0]
    if below.size:
        tau = int(below[0]) + tau_min
        while tau < tau_max and dn[tau + 1] < dn[tau]:
            tau += 1
    else:
        tau = int(np.argmin(dn[tau_min : tau_max + 1])) + tau_min
    shift, value = 0.0, float(dn[tau])
    if tau_min <= tau < tau_max and tau > 0:
        a, b, c = float(dn[tau - 1]), float(dn[tau]), float(dn[tau + 1])
        curvature = a - 2.0 * b + c
        if curvature > 0:
            shift = 0.5 * (a - c) / curvature
            value = b - 0.25 * (a - c) * shift
    return YinResult(sample_rate / (tau + shift), min(1.0, max(0.0, 1.0 - value)))
