"""IEC 61260-1 fractional-octave bands (base 10): centre frequencies, edges, nominal labels and a filter bank.

With the octave ratio G = 10^(3/10) and the reference frequency fr = 1000 Hz, the exact mid-band frequencies of
1/b-octave bands are

    fm = fr · G^(x/b)              for odd b (1, 3, ...)
    fm = fr · G^((2x + 1)/(2b))    for even b (2, 6, 12, 24)

for integer x, with band edges f1 = fm · G^(-1/(2b)) and f2 = fm · G^(1/(2b)). For b = 3, G^(x/3) = 10^(x/10): the
1/3-octave centres are 1000·10^(x/10) Hz (…, 398.1, 501.2, 631.0, 794.3, 1000, 1258.9, …), labelled with the
nominal values of the R10 series (…, 400, 500, 630, 800, 1000, 1250, …); octave centres are every third one.

The filter bank realises each band as a Butterworth band-pass of order 3 per edge (6 poles) with its -3 dB points
at f1 and f2, as second-order sections — the classic design that meets IEC 61260 class 1 for b = 1 and 3. A band
is kept only when f2 lies below Nyquist.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal as sps

G = 10.0 ** (3.0 / 10.0)
REFERENCE_HZ = 1000.0
BANDS_PER_OCTAVE: tuple[int, ...] = (1, 2, 3, 6, 12, 24)

# the R10 preferred numbers, as written on 1/3-octave band labels (31.5, not 31.6; 63, not 63.1)
_R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)


def _check(b: int) -> None:
    if b not in BANDS_PER_OCTAVE:
        raise ValueError(f"bands_per_octave must be one of {', '.join(map(str, BANDS_PER_OCTAVE))}, got {b}")


def centre_frequency(x: int, b: int) -> float:
    """The exact mid-band frequency fm (Hz) of band index x (x = 0 is 1 kHz for odd b)."""
    _check(b)
    exponent = x / b if b % 2 else (2 * x + 1) / (2 * b)
    return REFERENCE_HZ * G**exponent


def band_edges(fm: np.ndarray | float, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(f1, f2): the lower and upper band-edge frequencies fm·G^(∓1/(2b))."""
    factor = G ** (1.0 / (2 * b))
    f = np.asarray(fm, dtype=np.float64)
    return f / factor, f * factor


def nominal_frequency(fm: float, b: int) -> float:
    """The nominal value of a band centre: the R10 series for octave and 1/3-octave bands (31.5, 63, 1250), else
    fm rounded to 3 significant digits."""
    if b in (1, 3):
        tenth = round(10 * math.log10(fm))  # fm = 10^(tenth/10) exactly for these bands
        return _R10[tenth % 10] * 10.0 ** (tenth // 10)
    return float(f"{fm:.3g}")


def nominal_label(fm: float, b: int) -> str:
    """The band label written on analysers: "31.5", "400", "1k", "12.5k"."""
    value = nominal_frequency(fm, b)
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def band_indices(b: int, fmin: float, fmax: float) -> list[int]:
    """Indices x of the bands whose nominal frequency lies in [fmin, fmax] (so fmin=20 keeps the 19.95 Hz band)."""
    _check(b)
    if not 0 < fmin <= fmax:
        raise ValueError(f"need 0 < fmin <= fmax, got fmin={fmin}, fmax={fmax}")
    # invert fm = fr·G^e for a range of candidates wide enough to hold every band in [fmin, fmax]
    lo = math.floor(b * math.log(fmin / REFERENCE_HZ, G)) - 2
    hi = math.ceil(b * math.log(fmax / REFERENCE_HZ, G)) + 2
    return [x for x in range(lo, hi + 1) if fmin <= nominal_frequency(centre_frequency(x, b), b) <= fmax]


class OctaveFilterBank:
    """Butterworth band-pass filters for the 1/b-octave bands between fmin and fmax, state kept across blocks."""

    def __init__(self, b: int, sample_rate: float, fmin: float = 20.0, fmax: float = 20000.0, order: int = 3) -> None:
        indices = band_indices(b, fmin, fmax)
        centres = np.array([centre_frequency(x, b) for x in indices])
        f1, f2 = band_edges(centres, b)
        keep = f2 < sample_rate / 2
        if not np.any(keep):
            raise ValueError(
                f"no 1/{b}-octave band between {fmin} and {fmax} Hz fits below Nyquist ({sample_rate / 2} Hz)"
            )
        self.bands_per_octave = b
        self.sample_rate = sample_rate
        self.centres = centres[keep]
        self.lower, self.upper = f1[keep], f2[keep]
        self.labels = [nominal_label(float(f), b) for f in self.centres]
        self._sos = [
            sps.butter(order, [lo, hi], btype="bandpass", fs=sample_rate, output="sos")
            for lo, hi in zip(self.lower, self.upper, strict=True)
        ]
        self._zi = [np.zeros((s.shape[0], 2)) for s in self._sos]

    def __len__(self) -> int:
        return len(self.centres)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Filter the 1-D block ``x`` through every band: an array of shape (bands, frames)."""
        out = np.empty((len(self._sos), len(x)))
        for i, sos in enumerate(self._sos):
            out[i], self._zi[i] = sps.sosfilt(sos, x, zi=self._zi[i])
        return out

    def response_db(self, frequencies_hz: np.ndarray | float) -> np.ndarray:
        """Each band's gain (dB) at the given frequencies: shape (bands, frequencies)."""
        f = np.atleast_1d(np.asarray(frequencies_hz, dtype=np.float64))
        rows = []
        for sos in self._sos:
            _, h = sps.sosfreqz(sos, worN=f, fs=self.sample_rate)
            rows.append(20 * np.log10(np.maximum(np.abs(h), 1e-20)))
        return np.array(rows)
