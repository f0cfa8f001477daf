"""The FFT amplitude spectrum in dBFS, its interpolated peak, and its reduction to a few log-spaced points.

Spectrum of N samples x with window w (periodic, from ``scipy.signal.get_window``):

    X[k] = Σ_n x[n]·w[n]·e^{-2πi·kn/N},   f_k = k·fs/N,   k = 0 … N/2
    A[k] = 2·|X[k]| / Σw      (|X[k]| / Σw at k = 0 and at N/2): the amplitude of a sinusoid centred on bin k
    L[k] = 20·log10(A[k]/√2)  (20·log10 A[k] at 0 and N/2): its RMS level in dBFS, + the weighting W(f_k)

so a full-scale sine centred on a bin reads -3.01 dB, like the RMS level meters. Between bins the reading drops
(scalloping: up to 1.4 dB for Hann, 3.9 dB for rectangular, ~0 for flattop).

Peak interpolation: a parabola through the log magnitudes a = L[k-1], b = L[k], c = L[k+1] around the largest bin
peaks at

    p = ½·(a - c) / (a - 2b + c)  ∈ [-½, ½],    f_peak = (k + p)·fs/N,    L_peak = b - ¼·(a - c)·p

(Smith & Serra's quadratic interpolation; with a Hann window the frequency error is a few hundredths of a bin and
the level reads up to ~0.3 dB high or low).

Reduction to n points: n log-spaced bands between fmin and fmax (edges e_i = fmin·(fmax/fmin)^{i/n}, centres
√(e_i·e_{i+1})); each band holds the max of its bins ("max", keeps peaks visible) or the level of their mean power
("mean"); a band narrower than the bin spacing (at low frequencies) takes the level interpolated at its centre.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import signal as sps

from .levels import DB_FLOOR, amplitude_to_db, power_to_db

WINDOWS: dict[str, str | tuple[str, ...]] = {
    "hann": "hann",
    "hamming": "hamming",
    "blackman": "blackman",
    "blackmanharris": "blackmanharris",
    "flattop": "flattop",
    "rectangular": "boxcar",
}
"""Window names accepted by the spectrum, mapped to ``scipy.signal.get_window`` names."""

REDUCTIONS: tuple[str, ...] = ("max", "mean")


def make_window(name: str, size: int) -> np.ndarray:
    """The periodic (FFT) window ``name`` of ``size`` samples."""
    if name not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {name!r}")
    return sps.get_window(WINDOWS[name], size, fftbins=True)


def bin_frequencies(size: int, sample_rate: float) -> np.ndarray:
    """f_k = k·fs/N for the N/2+1 bins of a real FFT of ``size`` samples."""
    return sfft.rfftfreq(size, d=1.0 / sample_rate)


def amplitude_spectrum_db(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """L[k] in dBFS (RMS of the sinusoid in bin k) of the 1-D signal ``x`` (same length as ``window``)."""
    spectrum = np.abs(sfft.rfft(x * window))
    amplitude = spectrum * (2.0 / np.sum(window))
    rms = amplitude / np.sqrt(2.0)
    rms[0] = amplitude[0] / 2.0  # DC: its amplitude is its RMS, and it has no mirror image
    if len(x) % 2 == 0:
        rms[-1] = amplitude[-1] / 2.0  # Nyquist likewise
    return amplitude_to_db(rms)


def parabolic_peak(levels_db: np.ndarray, k: int) -> tuple[float, float]:
    """(fractional bin k + p, interpolated peak level) of the parabola through bins k-1, k, k+1."""
    if k <= 0 or k >= len(levels_db) - 1:
        return float(k), float(levels_db[k])
    a, b, c = (float(v) for v in levels_db[k - 1 : k + 2])
    denominator = a - 2.0 * b + c
    if denominator >= 0:  # flat or not a maximum: nothing to interpolate
        return float(k), b
    p = 0.5 * (a - c) / denominator
    return k + p, b - 0.25 * (a - c) * p


def find_peak(
    frequencies: np.ndarray, levels_db: np.ndarray, fmin: float, fmax: float, weights_db: np.ndarray | None = None
) -> tuple[float, float]:
    """Interpolated (frequency Hz, level dB) of the largest bin with fmin <= f <= fmax (DC excluded).

    With ``weights_db`` (a weighting per bin) the largest *weighted* bin is chosen, but the parabola goes through
    the unweighted levels: a steep weighting (A below 200 Hz) would tilt it and shift the peak's frequency. The
    weighting is then applied at the interpolated frequency by the caller.
    """
    weighted = levels_db if weights_db is None else levels_db + weights_db
    candidates = np.nonzero((frequencies >= fmin) & (frequencies <= fmax) & (frequencies > 0))[0]
    if candidates.size == 0:
        return 0.0, DB_FLOOR
    k = int(candidates[np.argmax(weighted[candidates])])
    k_frac, level = parabolic_peak(levels_db, k)
    spacing = frequencies[1] - frequencies[0]
    return k_frac * spacing, level


def log_bands(points: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """(edges, centres) of ``points`` log-spaced bands from fmin to fmax."""
    edges = np.geomspace(fmin, fmax, points + 1)
    return edges, np.sqrt(edges[:-1] * edges[1:])


def reduce_log(
    frequencies: np.ndarray, levels_db: np.ndarray, points: int, fmin: float, fmax: float, method: str = "max"
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a spectrum to ``points`` log-spaced bands: (band centres Hz, band levels dB)."""
    if method not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {method!r}")
    edges, centres = log_bands(points, fmin, fmax)
    lo = np.searchsorted(frequencies, edges[:-1], side="left")
    hi = np.searchsorted(frequencies, edges[1:], side="left")
    hi[-1] = np.searchsorted(frequencies, edges[-1], side="right")  # the last band includes fmax itself
    out = np.interp(centres, frequencies, levels_db)  # bands without a bin of their own
    filled = hi > lo
    if np.any(filled):
        # adjacent bands share edges, so the filled bands' bin ranges are contiguous: reduceat groups
        # [start_i, start_i+1) are exactly [lo_i, hi_i) once the array ends at the last band's end
        starts, end = lo[filled], int(hi[filled][-1])
        if method == "max":
            out[filled] = np.maximum.reduceat(levels_db[:end], starts)
        else:
            power = 10.0 ** (levels_db[:end] / 10.0)
            out[filled] = power_to_db(np.add.reduceat(power, starts) / (hi[filled] - starts))
    return centres, out
