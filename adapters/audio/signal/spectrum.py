"""The FFT amplitude spectrum in dBFS, its interpolated peak, averaging, peak markers and log-bin reduction.

Spectrum of N samples x with window w (periodic, from ``scipy.signal.get_window``):

    X[k] = Σ_n x[n]·w[n]·e^{-2πi·kn/N},   f_k = k·fs/N,   k = 0 … N/2
    A[k] = 2·|X[k]| / Σw      (|X[k]| / Σw at k = 0 and at N/2): the amplitude of a sinusoid centred on bin k
    L[k] = 20·log10(A[k]/√2)  (20·log10 A[k] at 0 and N/2): its RMS level in dBFS, + the weighting W(f_k)

so a full-scale sine centred on a bin reads -3.01 dB, like the RMS level meters. Between bins the reading drops
(scalloping: up to 1.4 dB for Hann, 3.9 dB for rectangular, 0.01 dB for flattop).

Peak interpolation with the window's own kernel. A sinusoid at bin k + δ (|δ| <= ½) gives |X[k+j]| ∝ K(δ - j),
K(u) = |Σ_n w[n]·e^{-2πi·un/N}| / Σw the window's normalised transform. So with the larger neighbour on side
s = ±1, the ratio q = A[k+s]/A[k] = K(1 - |δ|)/K(|δ|) rises monotonically from K(1)/K(0) to 1 as |δ| goes from
0 to ½ (for every window offered): |δ| is read off a table of q, and the level is L[k] - 20·log10 K(|δ|).
This is exact for a lone sinusoid whatever the window (a parabola through log magnitudes, the usual shortcut,
reads up to 0.35 dB high with flattop); what remains is leakage from other components (measured in
tests/adapters/test_audio_kernels.py: within 0.02 dB for every window, off-bin tones from 50 Hz to 15 kHz).
With a weighting, the peak is the largest weighted bin moved uphill to the local maximum of the unweighted
spectrum (a steep weighting, A below 200 Hz, tilts the weighted spectrum so its largest bin sits on the tone's
skirt), interpolated there, and then weighted at the interpolated frequency.

Averaging (``SpectrumAverager``): frames of N samples every hop = N/2 samples (50 % overlap, so every sample is
analysed whatever the chunk rate); their power spectra P_j are averaged exponentially with a response time τ,

    P̄_j = a·P̄_{j-1} + (1 - a)·P_j,   a = e^{-hop/(τ·fs)}      (P̄_0 = P_0: the first frame, not a ramp from 0)

and the peak markers decay linearly in dB from the highest level each bin reached:

    M_j = max(M_{j-1} - r·hop/fs, L̄_j)      (r in dB/s)

Reduction to n points: n log-spaced bands between fmin and fmax (edges e_i = fmin·(fmax/fmin)^{i/n}, centres
√(e_i·e_{i+1})); each band holds the max of its bins ("max", keeps peaks visible) or the level of their mean power
("mean"); a band narrower than the bin spacing (at low frequencies) takes the level interpolated at its centre.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import fft as sfft
from scipy import signal as sps

from .levels import DB_FLOOR, amplitude_to_db, power_to_db

WINDOWS: dict[str, str] = {
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


class WindowKernel:
    """The table behind the kernel interpolation of a window (see the module doc), built once per window."""

    REFERENCE_SIZE = 2048  # K(u) hardly depends on N beyond a few hundred samples: tabulate at most this size
    STEPS = 257

    def __init__(self, name: str, size: int) -> None:
        n = min(size, self.REFERENCE_SIZE)
        w = make_window(name, n)
        offsets = np.linspace(0.0, 0.5, self.STEPS)
        phases = np.exp(-2j * math.pi * np.outer(np.concatenate([offsets, 1.0 - offsets]), np.arange(n)) / n)
        kernel = np.abs(phases @ w) / np.sum(w)
        self.offsets = offsets
        self.ratio = kernel[self.STEPS :] / kernel[: self.STEPS]  # q(δ) = K(1 - δ)/K(δ), increasing
        self.loss_db = 20.0 * np.log10(kernel[: self.STEPS])  # 20·log10 K(δ) <= 0

    def peak(self, levels_db: np.ndarray, k: int) -> tuple[float, float]:
        """(fractional bin, level dB) of a sinusoid whose largest bin is k (a local maximum of ``levels_db``)."""
        if k <= 0 or k >= len(levels_db) - 1:
            return float(k), float(levels_db[k])
        left, centre, right = (10.0 ** (float(v) / 20.0) for v in levels_db[k - 1 : k + 2])
        side, neighbour = (1, right) if right >= left else (-1, left)
        rho = min(max(neighbour / centre, float(self.ratio[0])), 1.0) if centre > 0 else 0.0
        delta = float(np.interp(rho, self.ratio, self.offsets))
        return k + side * delta, float(levels_db[k]) - float(np.interp(delta, self.offsets, self.loss_db))


@functools.lru_cache(maxsize=16)
def window_kernel(name: str, size: int) -> WindowKernel:
    return WindowKernel(name, size)


def find_peak(
    frequencies: np.ndarray,
    levels_db: np.ndarray,
    fmin: float,
    fmax: float,
    kernel: WindowKernel,
    weights_db: np.ndarray | None = None,
) -> tuple[float, float]:
    """Interpolated (frequency Hz, unweighted level dB) of the peak in fmin <= f <= fmax (DC excluded).

    With ``weights_db`` (a weighting per bin) the largest *weighted* bin is chosen and then moved uphill to the
    local maximum of the unweighted levels; the caller applies the weighting at the interpolated frequency.
    """
    weighted = levels_db if weights_db is None else levels_db + weights_db
    candidates = np.nonzero((frequencies >= fmin) & (frequencies <= fmax) & (frequencies > 0))[0]
    if candidates.size == 0:
        return 0.0, DB_FLOOR
    k = int(candidates[np.argmax(weighted[candidates])])
    last = len(levels_db) - 1
    while True:  # uphill on the unweighted spectrum
        if k < last and levels_db[k + 1] > levels_db[k]:
            k += 1
        elif k > 1 and levels_db[k - 1] > levels_db[k]:
            k -= 1
        else:
            break
    k_frac, level = kernel.peak(levels_db, k)
    spacing = frequencies[1] - frequencies[0]
    return k_frac * spacing, level


def power_spectrum(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The RMS power of the sinusoid each bin stands for (10^(L[k]/10) of :func:`amplitude_spectrum_db`)."""
    amplitude = np.abs(sfft.rfft(x * window)) * (2.0 / np.sum(window))
    power = amplitude**2 / 2.0
    power[0] = (amplitude[0] / 2.0) ** 2
    if len(x) % 2 == 0:
        power[-1] = (amplitude[-1] / 2.0) ** 2
    return power


class Framer:
    """Cuts a stream of samples into frames of ``size`` samples every ``hop`` samples (frame j ends at sample
    size + j·hop), whatever the block sizes: ``push(block)`` returns the frames completed by it."""

    def __init__(self, size: int, hop: int) -> None:
        if not 1 <= hop:
            raise ValueError(f"hop must be at least one sample, got {hop}")
        self.size, self.hop = size, hop
        self._buffer = np.zeros(0)
        self._start = 0  # stream index of _buffer[0]
        self._next_end = size  # stream index one past the next frame's last sample
        self.frames = 0

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        self._buffer = np.concatenate([self._buffer, np.asarray(block, dtype=np.float64)])
        out = []
        while self._next_end <= self._start + len(self._buffer):
            end = self._next_end - self._start
            out.append(self._buffer[end - self.size : end].copy())
            self._next_end += self.hop
            self.frames += 1
        keep_from = max(0, self._next_end - self.size - self._start)
        self._buffer = self._buffer[keep_from:]
        self._start += keep_from
        return out


class SpectrumAverager:
    """Exponential averaging of frame power spectra and decaying peak markers (formulas in the module doc)."""

    def __init__(self, hop_s: float, response_time_s: float | None, peak_decay_db_s: float | None) -> None:
        self.alpha = 0.0 if not response_time_s else math.exp(-hop_s / response_time_s)
        self.decay_db = None if peak_decay_db_s is None else peak_decay_db_s * hop_s
        self.power: np.ndarray | None = None
        self.peaks_db: np.ndarray | None = None

    def add(self, power: np.ndarray, weights_db: np.ndarray) -> None:
        self.power = power if self.power is None else self.alpha * self.power + (1.0 - self.alpha) * power
        if self.decay_db is not None:
            level = power_to_db(self.power) + weights_db
            self.peaks_db = level if self.peaks_db is None else np.maximum(self.peaks_db - self.decay_db, level)


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
