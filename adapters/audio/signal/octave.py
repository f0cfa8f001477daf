"""IEC 61260-1 fractional-octave bands (base 10): centre frequencies, edges, nominal labels and a filter bank.

With the octave ratio G = 10^(3/10) and the reference frequency fr = 1000 Hz, the exact mid-band frequencies of
1/b-octave bands are

    fm = fr · G^(x/b)              for odd b (1, 3, ...)
    fm = fr · G^((2x + 1)/(2b))    for even b (2, 6, 12, 24)

for integer x, with band edges f1 = fm · G^(-1/(2b)) and f2 = fm · G^(1/(2b)). For b = 3, G^(x/3) = 10^(x/10): the
1/3-octave centres are 1000·10^(x/10) Hz (…, 398.1, 501.2, 631.0, 794.3, 1000, 1258.9, …), labelled with the
nominal values of the R10 series (…, 400, 500, 630, 800, 1000, 1250, …); octave centres are every third one.

The filter bank realises each band as a Butterworth band-pass with its -3 dB points at f1 and f2, normalised to
0 dB at fm, as second-order sections, in a multirate bank:

- Decimation for the low bands: stage k runs at fs/2^k, fed by halving the rate of stage k-1 (a Chebyshev II
  low-pass of order 8, 90 dB down from a quarter of the input rate, i.e. from the new Nyquist, then every second
  sample: nothing aliases into a lower stage above -90 dB). A band runs at the lowest rate at which its upper
  edge f2 is at most 0.2 of that rate, where the bilinear transform barely warps it, with order 3 per edge
  (6 poles), the classic design. Low bands become well-conditioned and cheap (each stage costs half the one
  above).
- Enough stopband for the top bands: bands that stay above 0.2·fs at the full rate (at 48 kHz the third-octaves
  from 10 kHz and the 8k/16k octaves) are warped by the bilinear transform so much that a 6-pole design misses
  the lower stopband (by up to 10.5 dB at 48 kHz); they get order 5 per edge (10 poles).

Measured against the IEC 61260-1:2014 Table 1 class 1 mask at the standard's normalised frequencies
(tests/adapters/test_audio_kernels.py): every band of b = 1, 2, 3, 6, 12, 24 passes at 44.1 and 48 kHz. A band
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


STAGE_FRACTION = 0.2
"""A band runs at the lowest rate fs/2^k at which its upper edge is at most this fraction of that rate."""
TOP_ORDER = 5
"""Butterworth order per edge of the bands that stay above STAGE_FRACTION of the full rate (see the module doc)."""


class _Decimator:
    """Halves the rate of a 1-D signal: a Chebyshev II low-pass (90 dB from a quarter of the input rate), then
    every second sample, with filter state and sample parity kept across blocks of any length."""

    def __init__(self, rate: float) -> None:
        self.sos = sps.cheby2(8, 90.0, 0.25 * rate, fs=rate, output="sos")
        self._zi = np.zeros((self.sos.shape[0], 2))
        self._phase = 0  # index, in the next block, of the next sample to keep

    def process(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return x
        y, self._zi = sps.sosfilt(self.sos, x, zi=self._zi)
        kept = y[self._phase :: 2]
        self._phase = (self._phase - len(x)) % 2
        return kept


class OctaveFilterBank:
    """The 1/b-octave bands between fmin and fmax as a multirate Butterworth bank, state kept across blocks.

    ``process(x)`` returns one array per stage k, of shape (bands of that stage, samples at fs/2^k);
    ``stage_rates[k]`` is the rate of stage k and ``stage_bands[k]`` the indices (into ``centres``) of its bands.
    """

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
        self.stage = [self._stage_of(float(high)) for high in self.upper]
        self.orders = [
            order if high <= STAGE_FRACTION * sample_rate / 2**k else TOP_ORDER
            for high, k in zip(self.upper, self.stage, strict=True)
        ]
        stages = max(self.stage) + 1
        self.stage_rates = [sample_rate / 2**k for k in range(stages)]
        self.stage_bands = [[i for i, k in enumerate(self.stage) if k == s] for s in range(stages)]
        self._decimators = [_Decimator(rate) for rate in self.stage_rates[:-1]]
        self._sos: list[np.ndarray] = []
        for i, (low, high) in enumerate(zip(self.lower, self.upper, strict=True)):
            rate = self.stage_rates[self.stage[i]]
            self._sos.append(sps.butter(self.orders[i], [low, high], btype="bandpass", fs=rate, output="sos"))
            # 0 dB at the mid-band frequency, through the decimation filters too
            self._sos[i][0, :3] /= 10 ** (float(self.response_db(self.centres[i], [i])[0, 0]) / 20)
        self._zi = [np.zeros((s.shape[0], 2)) for s in self._sos]

    def _stage_of(self, upper_edge: float) -> int:
        k = 0
        while upper_edge <= STAGE_FRACTION * self.sample_rate / 2 ** (k + 1):
            k += 1
        return k

    def __len__(self) -> int:
        return len(self.centres)

    def process(self, x: np.ndarray) -> list[np.ndarray]:
        """Filter the 1-D block ``x`` through every band: per stage, an array of shape (bands, samples)."""
        signal = np.asarray(x, dtype=np.float64)
        out = []
        for k, bands in enumerate(self.stage_bands):
            if k:
                signal = self._decimators[k - 1].process(signal)
            rows = np.empty((len(bands), len(signal)))
            if len(signal):
                for row, i in enumerate(bands):
                    rows[row], self._zi[i] = sps.sosfilt(self._sos[i], signal, zi=self._zi[i])
            out.append(rows)
        return out

    def response_db(self, frequencies_hz: np.ndarray | float, bands: list[int] | None = None) -> np.ndarray:
        """Each band's gain (dB) for a sinusoid at the given frequencies: shape (bands, frequencies); ``bands``
        limits it to those band indices (in that order).

        A sinusoid keeps its amplitude when a stage drops every second sample, reappearing at its alias in
        [0, rate/2]: the gain is the product of the decimation filters' gains along the way and the band
        filter's gain at the final alias (exactly what ``process`` does to a steady sinusoid).
        """
        f = np.atleast_1d(np.asarray(frequencies_hz, dtype=np.float64))
        stage_gain = [np.ones_like(f)]
        aliases = [f]
        deepest = max(self.stage) if bands is None else max(self.stage[i] for i in bands)
        for k, decimator in enumerate(self._decimators[:deepest]):
            _, h = sps.sosfreqz(decimator.sos, worN=aliases[k], fs=self.stage_rates[k])
            stage_gain.append(stage_gain[k] * np.abs(h))
            half = self.stage_rates[k + 1]
            aliases.append(np.abs(np.mod(aliases[k] + half / 2, half) - half / 2))
        rows = []
        for i in range(len(self._sos)) if bands is None else bands:
            k = self.stage[i]
            _, h = sps.sosfreqz(self._sos[i], worN=aliases[k], fs=self.stage_rates[k])
            rows.append(20 * np.log10(np.maximum(np.abs(h) * stage_gain[k], 1e-20)))
        return np.array(rows)
