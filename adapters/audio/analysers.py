"""The stateful analysers behind each stream: they take every block of audio and describe the latest state.

``feed(block)`` takes each ``(frames, channels)`` block in order (so time weighting and filters see every sample,
whatever the emission rate); ``ready`` says whether there is enough audio for a first result; ``snapshot(header)``
returns the chunk to emit, a dict (JSON) or, for ``format='npy'``, a :class:`StreamChunk` holding a float32 array
with the scalar fields in its metadata. ``header`` holds the fields every chunk carries (``t_s``, ``index``,
``overflows``). The numeric work is in :mod:`.signal`; here it is wired to blocks and chunk fields.

JSON chunks carry rounded floats (dB to 0.01, Hz to 0.01, samples to 1e-5): enough for any display, and
a few times smaller than full float repr on the wire.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from python_worker import StreamChunk

from .signal.levels import (
    DB_FLOOR,
    TIME_CONSTANTS_S,
    ExponentialAverager,
    PeakHold,
    amplitude_to_db,
    power_to_db,
    rms_db,
)
from .signal.notes import note_of
from .signal.octave import OctaveFilterBank
from .signal.spectrum import (
    Framer,
    SpectrumAverager,
    amplitude_spectrum_db,
    bin_frequencies,
    find_peak,
    make_window,
    power_spectrum,
    reduce_log,
    window_kernel,
)
from .signal.weighting import WeightingFilter, weighting_db
from .signal.yin import lag_range, yin

Format = Literal["json", "npy"]


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _npy_chunk(array: np.ndarray, fields: dict[str, Any]) -> StreamChunk[Any]:
    """A float32 array chunk; the scalar fields travel as metadata strings (None as "")."""
    meta = {k: "" if v is None else str(v) for k, v in fields.items()}
    return StreamChunk(data=np.ascontiguousarray(array, dtype=np.float32), metadata=meta)


class History:
    """The most recent ``size`` frames of a ``(frames, channels)`` signal."""

    def __init__(self, size: int, channels: int) -> None:
        self.buffer = np.zeros((size, channels))
        self.filled = 0

    def push(self, block: np.ndarray) -> None:
        size, n = len(self.buffer), len(block)
        if n >= size:
            self.buffer[:] = block[-size:]
        else:
            self.buffer[:-n] = self.buffer[n:]
            self.buffer[-n:] = block
        self.filled = min(size, self.filled + n)

    @property
    def full(self) -> bool:
        return self.filled == len(self.buffer)


def _select(block: np.ndarray, channel: int | None) -> np.ndarray:
    """One channel of the block, or the mean of all channels when ``channel`` is None: shape (frames, 1)."""
    if channel is None:
        return block.mean(axis=1, keepdims=True) if block.shape[1] > 1 else block
    return block[:, channel : channel + 1]


def _check_channel(channel: int | None, channels: int) -> None:
    if channel is not None and not 0 <= channel < channels:
        raise ValueError(f"channel must be between 0 and {channels - 1} (the source has {channels}), got {channel}")


def _time_constant(time_weighting: str) -> float:
    if time_weighting not in TIME_CONSTANTS_S:
        raise ValueError(f"time_weighting must be one of {', '.join(TIME_CONSTANTS_S)}, got {time_weighting!r}")
    return TIME_CONSTANTS_S[time_weighting]


class LevelsAnalyser:
    """Per channel, over every sample since the previous chunk: the frequency-weighted peak, C-weighted peak
    (LCpeak), time-weighted maximum (LAFmax / LASmax ...), Leq; the time-weighted level now; the held peak."""

    def __init__(
        self, sample_rate: int, channels: int, *, time_weighting: str, weighting: str, peak_hold_s: float
    ) -> None:
        self.time_weighting, self.weighting = time_weighting, weighting
        self.time_constant_s = _time_constant(time_weighting)
        self.sample_rate = sample_rate
        self._filter = WeightingFilter(weighting, sample_rate, channels)
        # LCpeak needs the C-weighted signal whatever the chosen weighting
        self._c_filter = None if weighting == "C" else WeightingFilter("C", sample_rate, channels)
        self._average = ExponentialAverager(self.time_constant_s, sample_rate, channels)
        self._hold = PeakHold(peak_hold_s, channels)
        self._peak = np.zeros(channels)
        self._c_peak = np.zeros(channels)
        self._max = np.zeros(channels)
        self._sum_squares = np.zeros(channels)
        self._frames = 0  # in this interval
        self._total = 0  # since the start: the time of each sample
        self.ready = False

    def feed(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        weighted = self._filter.process(block)
        squared = np.square(weighted, dtype=np.float64)
        self._max = np.maximum(self._max, np.max(self._average.process(squared), axis=0))
        magnitude = np.abs(weighted)
        at = np.argmax(magnitude, axis=0)
        peaks = magnitude[at, np.arange(magnitude.shape[1])]
        self._hold.add(peaks, (self._total + at + 1) / self.sample_rate)
        self._peak = np.maximum(self._peak, peaks)
        c_weighted = weighted if self._c_filter is None else self._c_filter.process(block)
        self._c_peak = np.maximum(self._c_peak, np.max(np.abs(c_weighted), axis=0))
        self._sum_squares += squared.sum(axis=0)
        self._frames += len(block)
        self._total += len(block)
        self.ready = True

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any]:
        chunk = {
            **header,
            "rms_dbfs": _rounded(power_to_db(self._average.value), 2),
            "max_dbfs": _rounded(power_to_db(self._max), 2),
            "leq_dbfs": _rounded(power_to_db(self._sum_squares / max(self._frames, 1)), 2),
            "peak_dbfs": _rounded(amplitude_to_db(self._peak), 2),
            "c_peak_dbfs": _rounded(amplitude_to_db(self._c_peak), 2),
            "peak_hold_dbfs": _rounded(amplitude_to_db(self._hold.held(self._total / self.sample_rate)), 2),
            "time_weighting": self.time_weighting,
            "weighting": self.weighting,
        }
        self._peak[:] = 0.0
        self._c_peak[:] = 0.0
        self._max[:] = 0.0
        self._sum_squares[:] = 0.0
        self._frames = 0
        return chunk


class _SpectrumLayout:
    """What spectrum and spectrogram share: the checked FFT size, window, weighting, range and reduction."""

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        fft_size: int,
        window: str,
        weighting: str,
        points: int | None,
        reduce: str,
        fmin: float,
        fmax: float | None,
        channel: int | None,
    ) -> None:
        if not 16 <= fft_size <= 1 << 17:
            raise ValueError(f"fft_size must be between 16 and 131072, got {fft_size}")
        nyquist = sample_rate / 2
        fmax = nyquist if fmax is None else fmax
        if not 0 <= fmin < fmax <= nyquist:
            raise ValueError(
                f"need 0 <= fmin < fmax <= {nyquist} Hz (half the sample rate), got fmin={fmin}, fmax={fmax}"
            )
        if points is not None and not 2 <= points <= 4096:
            raise ValueError(f"points must be between 2 and 4096 (or null for every bin), got {points}")
        _check_channel(channel, channels)
        self.sample_rate, self.fft_size, self.window_name, self.weighting = sample_rate, fft_size, window, weighting
        self.points, self.reduce, self.channel = points, reduce, channel
        self.window = make_window(window, fft_size)
        self.kernel = window_kernel(window, fft_size)
        self.frequencies = bin_frequencies(fft_size, sample_rate)
        self.bin_hz = sample_rate / fft_size
        # log bands cannot start at 0 Hz: they start at the first bin at or above fmin
        self.fmin, self.fmax = (max(fmin, self.bin_hz) if points else fmin), fmax
        self.weights = weighting_db(weighting, self.frequencies)
        self._in_range = (self.frequencies >= self.fmin) & (self.frequencies <= self.fmax)
        if points is not None:
            reduce_log(self.frequencies, np.zeros(len(self.frequencies)), points, self.fmin, self.fmax, reduce)

    def shown(self, levels_db: np.ndarray, reduce: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(frequencies, levels) as shown: reduced to ``points`` log bands, or every bin in range."""
        if self.points:
            return reduce_log(self.frequencies, levels_db, self.points, self.fmin, self.fmax, reduce or self.reduce)
        return self.frequencies[self._in_range], levels_db[self._in_range]

    def fields(self) -> dict[str, Any]:
        return {
            "fft_size": self.fft_size,
            "bin_hz": round(self.bin_hz, 6),
            "window": self.window_name,
            "weighting": self.weighting,
        }


class SpectrumAnalyser:
    """The windowed FFT of the latest ``fft_size`` samples (or the exponential average of frames every
    ``fft_size/2`` samples, with decaying peak markers), weighted, with its peak, optionally reduced."""

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        fft_size: int,
        window: str,
        weighting: str,
        points: int | None,
        reduce: str,
        fmin: float,
        fmax: float | None,
        channel: int | None,
        format: Format,
        response_time_s: float | None = None,
        peak_decay_db_s: float | None = None,
    ) -> None:
        self.layout = _SpectrumLayout(
            sample_rate, channels, fft_size=fft_size, window=window, weighting=weighting, points=points,
            reduce=reduce, fmin=fmin, fmax=fmax, channel=channel,
        )  # fmt: skip
        if response_time_s is not None and not 0 < response_time_s <= 3600:
            raise ValueError(f"response_time_s must be > 0 and <= 3600 (or null: no averaging), got {response_time_s}")
        if peak_decay_db_s is not None and not 0 <= peak_decay_db_s <= 1000:
            raise ValueError(
                f"peak_decay_db_s must be between 0 and 1000 (or null: no peak markers), got {peak_decay_db_s}"
            )
        self.format, self.channel = format, channel
        self.response_time_s, self.peak_decay_db_s = response_time_s, peak_decay_db_s
        self._history = History(fft_size, 1)
        self._framer: Framer | None = None
        self._averager: SpectrumAverager | None = None
        if response_time_s is not None or peak_decay_db_s is not None:
            hop = fft_size // 2
            self._framer = Framer(fft_size, hop)
            self._averager = SpectrumAverager(hop / sample_rate, response_time_s, peak_decay_db_s)

    @property
    def ready(self) -> bool:
        if self._averager is not None:
            return self._averager.power is not None
        return self._history.full

    def feed(self, block: np.ndarray) -> None:
        mono = _select(block, self.channel)
        if self._framer is None or self._averager is None:
            self._history.push(mono)
            return
        for frame in self._framer.push(mono[:, 0]):
            self._averager.add(power_spectrum(frame, self.layout.window), self.layout.weights)

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any] | StreamChunk[Any]:
        layout = self.layout
        if self._averager is not None and self._averager.power is not None:
            raw = power_to_db(self._averager.power)
        else:
            raw = amplitude_spectrum_db(self._history.buffer[:, 0], layout.window)
        levels = np.maximum(raw + layout.weights, DB_FLOOR)
        peak_hz, raw_peak_db = find_peak(
            layout.frequencies, raw, layout.fmin, layout.fmax, layout.kernel, layout.weights
        )
        peak_db = max(raw_peak_db + float(weighting_db(layout.weighting, peak_hz)), DB_FLOOR)
        frequencies, magnitudes = layout.shown(levels)
        fields = {
            **header,
            "peak_frequency_hz": round(float(peak_hz), 3),
            "peak_db": round(float(peak_db), 2),
            **layout.fields(),
            "response_time_s": self.response_time_s,
            "peak_decay_db_s": self.peak_decay_db_s,
        }
        rows = [frequencies, magnitudes]
        markers = None
        if self._averager is not None and self._averager.peaks_db is not None:
            _, markers = layout.shown(np.maximum(self._averager.peaks_db, DB_FLOOR), "max")
            rows.append(markers)
        if self.format == "npy":
            return _npy_chunk(np.vstack(rows), fields)
        chunk = {**fields, "frequencies_hz": _rounded(frequencies, 2), "magnitudes_db": _rounded(magnitudes, 2)}
        if markers is not None:
            chunk["peak_magnitudes_db"] = _rounded(markers, 2)
        return chunk


class SpectrogramAnalyser:
    """Rows of dB levels, one per frame of ``fft_size`` samples every ``hop`` samples; each chunk carries the rows
    completed since the previous one, so every frame of the audio appears exactly once."""

    MAX_HOP_S = 10.0

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        fft_size: int,
        hop_s: float | None,
        window: str,
        weighting: str,
        points: int | None,
        reduce: str,
        fmin: float,
        fmax: float | None,
        channel: int | None,
        format: Format,
    ) -> None:
        self.layout = _SpectrumLayout(
            sample_rate, channels, fft_size=fft_size, window=window, weighting=weighting, points=points,
            reduce=reduce, fmin=fmin, fmax=fmax, channel=channel,
        )  # fmt: skip
        if hop_s is not None and not 1.0 / sample_rate <= hop_s <= self.MAX_HOP_S:
            raise ValueError(
                f"hop_s must be between one sample and {self.MAX_HOP_S} s (or null: fft_size/2), got {hop_s}"
            )
        self.hop = fft_size // 2 if hop_s is None else max(1, round(hop_s * sample_rate))
        self.sample_rate, self.format, self.channel = sample_rate, format, channel
        self._framer = Framer(fft_size, self.hop)
        self._rows: list[np.ndarray] = []
        self._first_end = 0  # sample index one past the end of the first pending row's frame
        self.frequencies, _ = self.layout.shown(np.zeros(len(self.layout.frequencies)))

    @property
    def ready(self) -> bool:
        return bool(self._rows)

    def feed(self, block: np.ndarray) -> None:
        layout = self.layout
        frames = self._framer.push(_select(block, self.channel)[:, 0])
        first_index = self._framer.frames - len(frames)
        for i, frame in enumerate(frames):
            if not self._rows:
                self._first_end = layout.fft_size + (first_index + i) * self.hop
            levels = np.maximum(power_to_db(power_spectrum(frame, layout.window)) + layout.weights, DB_FLOOR)
            self._rows.append(layout.shown(levels)[1])

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any] | StreamChunk[Any]:
        rows = np.array(self._rows)
        fields = {
            **header,
            "rows": len(rows),
            "first_row_t_s": round(self._first_end / self.sample_rate, 6),
            "hop_s": round(self.hop / self.sample_rate, 6),
            **self.layout.fields(),
        }
        self._rows = []
        if self.format == "npy":
            return _npy_chunk(np.vstack([self.frequencies[None, :], rows]), fields)
        return {**fields, "frequencies_hz": _rounded(self.frequencies, 2), "rows_db": [_rounded(r, 2) for r in rows]}


class OctaveAnalyser:
    """IEC 61260 fractional-octave band levels of the frequency-weighted signal: the A/C weighting filter, then
    the multirate filter bank, squared and exponentially time-weighted at each band's own rate. ``overall_db``
    is the time-weighted level of the weighted signal itself (a sound level meter's broadband reading), exact
    for any signal; the power sum of the bands would read a tone -0.7 to +0.8 dB off, depending on where it
    falls between two band centres (Butterworth bands do not add up to a flat response)."""

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        bands_per_octave: int,
        fmin: float,
        fmax: float,
        weighting: str,
        time_weighting: str,
        channel: int | None,
    ) -> None:
        _check_channel(channel, channels)
        self.bank = OctaveFilterBank(bands_per_octave, sample_rate, fmin, fmax)
        self.weighting, self.time_weighting, self.channel = weighting, time_weighting, channel
        self._filter = WeightingFilter(weighting, sample_rate, 1)
        tau = _time_constant(time_weighting)
        self._averages = [
            ExponentialAverager(tau, rate, len(bands))
            for rate, bands in zip(self.bank.stage_rates, self.bank.stage_bands, strict=True)
        ]
        self._overall = ExponentialAverager(tau, sample_rate, 1)
        self._centres = _rounded(self.bank.centres, 2)
        self.ready = False

    def feed(self, block: np.ndarray) -> None:
        weighted = self._filter.process(_select(block, self.channel))[:, 0]
        self._overall.process(np.square(weighted)[:, None])
        for average, bands in zip(self._averages, self.bank.process(weighted), strict=True):
            average.process(np.square(bands).T)
        self.ready = True

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any]:
        power = np.empty(len(self.bank))
        for average, bands in zip(self._averages, self.bank.stage_bands, strict=True):
            power[bands] = average.value
        levels = power_to_db(power)
        overall = power_to_db(self._overall.value[0])
        return {
            **header,
            "band_levels_db": _rounded(levels, 2),
            "overall_db": round(float(overall), 2),
            "centre_frequencies_hz": self._centres,
            "band_labels": self.bank.labels,
            "bands_per_octave": self.bank.bands_per_octave,
            "weighting": self.weighting,
            "time_weighting": self.time_weighting,
        }


class PitchAnalyser:
    """YIN on the latest frame, with a voicing gate on level and confidence.

    The frame holds the integration window W and the longest period τmax = ⌈fs/fmin⌉; by default it spans three
    periods of fmin (46 ms at 65 Hz), like Praat's pitch analysis window, so W is two periods.
    """

    FRAME_PERIODS = 3.0
    MAX_FRAME_S = 2.0

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        fmin: float,
        fmax: float,
        frame_s: float | None = None,
        threshold: float,
        min_confidence: float,
        min_level_dbfs: float,
        channel: int | None,
    ) -> None:
        _check_channel(channel, channels)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        _, tau_max = lag_range(sample_rate, fmin, fmax)
        if frame_s is None:
            frame = math.ceil(self.FRAME_PERIODS * sample_rate / fmin)
        else:
            shortest = 2 * tau_max / sample_rate
            if not shortest <= frame_s <= self.MAX_FRAME_S:
                raise ValueError(
                    f"frame_s must be between 2/fmin = {shortest:.4f} s (for fmin={fmin} Hz: the frame holds the"
                    f" integration window and the longest period) and {self.MAX_FRAME_S} s, got {frame_s}"
                )
            frame = round(frame_s * sample_rate)
        self.sample_rate, self.fmin, self.fmax, self.threshold = sample_rate, fmin, fmax, threshold
        self.frame_s = frame / sample_rate
        self.min_confidence, self.min_level_dbfs, self.channel = min_confidence, min_level_dbfs, channel
        self._history = History(frame, 1)

    @property
    def ready(self) -> bool:
        return self._history.full

    def feed(self, block: np.ndarray) -> None:
        self._history.push(_select(block, self.channel))

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any]:
        frame = self._history.buffer[:, 0]
        level = float(rms_db(frame))
        result = yin(frame, self.sample_rate, self.fmin, self.fmax, self.threshold)
        voiced = (
            result.frequency_hz is not None
            and level >= self.min_level_dbfs
            and result.confidence >= self.min_confidence
        )
        chunk: dict[str, Any] = {
            **header,
            "frequency_hz": None,
            "confidence": round(result.confidence, 4),
            "note": None,
            "cents": None,
            "midi": None,
            "level_dbfs": round(level, 2),
            "voiced": voiced,
        }
        if voiced and result.frequency_hz is not None:
            note = note_of(result.frequency_hz)
            chunk.update(
                frequency_hz=round(result.frequency_hz, 3),
                note=note.name,
                cents=round(note.cents, 1),
                midi=round(note.midi, 3),
            )
        return chunk


class ScopeAnalyser:
    """The latest ``window`` frames of every channel, decimated to at most ``points`` samples per channel."""

    def __init__(self, sample_rate: int, channels: int, *, window_frames: int, points: int, format: Format) -> None:
        if not 2 <= points <= 65536:
            raise ValueError(f"points must be between 2 and 65536, got {points}")
        if not 1 <= window_frames <= 10 * sample_rate:
            raise ValueError(f"the scope window must be between 1 sample and 10 s, got {window_frames} frames")
        self.sample_rate, self.points, self.format = sample_rate, points, format
        self.step = math.ceil(window_frames / points)  # plain decimation: a scope shows samples, not a spectrum
        self._history = History(window_frames, channels)

    @property
    def ready(self) -> bool:
        return self._history.full

    def feed(self, block: np.ndarray) -> None:
        self._history.push(block)

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any] | StreamChunk[Any]:
        samples = self._history.buffer[:: self.step].T  # (channels, points)
        fields = {
            **header,
            "sample_rate_hz": round(self.sample_rate / self.step, 3),
            "decimation": self.step,
            "window_s": round(len(self._history.buffer) / self.sample_rate, 6),
        }
        if self.format == "npy":
            return _npy_chunk(samples, fields)
        return {**fields, "samples": [_rounded(row, 5) for row in samples]}
