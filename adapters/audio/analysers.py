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
from .signal.spectrum import amplitude_spectrum_db, bin_frequencies, find_peak, make_window, reduce_log
from .signal.weighting import WeightingFilter, weighting_db
from .signal.yin import lag_range, yin

Format = Literal["json", "npy"]


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _npy_chunk(array: np.ndarray, fields: dict[str, Any]) -> StreamChunk:
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
    """Peak, time-weighted RMS, interval RMS (Leq) and held peak per channel, of the frequency-weighted signal."""

    def __init__(
        self, sample_rate: int, channels: int, *, time_weighting: str, weighting: str, peak_hold_s: float
    ) -> None:
        self.time_weighting, self.weighting = time_weighting, weighting
        self.time_constant_s = _time_constant(time_weighting)
        self._filter = WeightingFilter(weighting, sample_rate, channels)
        self._average = ExponentialAverager(self.time_constant_s, sample_rate, channels)
        self._hold = PeakHold(peak_hold_s, channels)
        self._peak = np.zeros(channels)
        self._sum_squares = np.zeros(channels)
        self._frames = 0
        self.ready = False

    def feed(self, block: np.ndarray) -> None:
        weighted = self._filter.process(block)
        squared = np.square(weighted, dtype=np.float64)
        self._average.process(squared)
        self._peak = np.maximum(self._peak, np.max(np.abs(weighted), axis=0))
        self._sum_squares += squared.sum(axis=0)
        self._frames += len(block)
        self.ready = True

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any]:
        held = self._hold.update(self._peak, header["t_s"])
        chunk = {
            **header,
            "rms_dbfs": _rounded(power_to_db(self._average.value), 2),
            "peak_dbfs": _rounded(amplitude_to_db(self._peak), 2),
            "peak_hold_dbfs": _rounded(amplitude_to_db(held), 2),
            "leq_dbfs": _rounded(power_to_db(self._sum_squares / max(self._frames, 1)), 2),
            "time_weighting": self.time_weighting,
            "weighting": self.weighting,
        }
        self._peak[:] = 0.0
        self._sum_squares[:] = 0.0
        self._frames = 0
        return chunk


class SpectrumAnalyser:
    """The windowed FFT of the latest ``fft_size`` samples, weighted, with its peak, optionally reduced."""

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
        self.fft_size, self.window_name, self.weighting = fft_size, window, weighting
        self.points, self.reduce, self.channel, self.format = points, reduce, channel, format
        self.window = make_window(window, fft_size)
        self.frequencies = bin_frequencies(fft_size, sample_rate)
        self.bin_hz = sample_rate / fft_size
        # log bands cannot start at 0 Hz: they start at the first bin at or above fmin
        self.fmin, self.fmax = (max(fmin, self.bin_hz) if points else fmin), fmax
        self._weights = weighting_db(weighting, self.frequencies)
        self._in_range = (self.frequencies >= self.fmin) & (self.frequencies <= self.fmax)
        self._history = History(fft_size, 1)
        if points is not None:
            reduce_log(self.frequencies, np.zeros(len(self.frequencies)), points, self.fmin, self.fmax, reduce)

    @property
    def ready(self) -> bool:
        return self._history.full

    def feed(self, block: np.ndarray) -> None:
        self._history.push(_select(block, self.channel))

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any] | StreamChunk:
        raw = amplitude_spectrum_db(self._history.buffer[:, 0], self.window)
        levels = np.maximum(raw + self._weights, DB_FLOOR)
        peak_hz, raw_peak_db = find_peak(self.frequencies, raw, self.fmin, self.fmax, self._weights)
        peak_db = max(raw_peak_db + float(weighting_db(self.weighting, peak_hz)), DB_FLOOR)
        if self.points:
            frequencies, magnitudes = reduce_log(
                self.frequencies, levels, self.points, self.fmin, self.fmax, self.reduce
            )
        else:
            frequencies, magnitudes = self.frequencies[self._in_range], levels[self._in_range]
        fields = {
            **header,
            "peak_frequency_hz": round(float(peak_hz), 3),
            "peak_db": round(float(peak_db), 2),
            "fft_size": self.fft_size,
            "bin_hz": round(self.bin_hz, 6),
            "window": self.window_name,
            "weighting": self.weighting,
        }
        if self.format == "npy":
            return _npy_chunk(np.vstack([frequencies, magnitudes]), fields)
        return {**fields, "frequencies_hz": _rounded(frequencies, 2), "magnitudes_db": _rounded(magnitudes, 2)}


class OctaveAnalyser:
    """IEC 61260 fractional-octave band levels: filter bank, squared, exponentially time-weighted, weighted."""

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
        self._average = ExponentialAverager(_time_constant(time_weighting), sample_rate, len(self.bank))
        self._weights = weighting_db(weighting, self.bank.centres)
        self._centres = _rounded(self.bank.centres, 2)
        self.ready = False

    def feed(self, block: np.ndarray) -> None:
        bands = self.bank.process(_select(block, self.channel)[:, 0])
        self._average.process(np.square(bands).T)
        self.ready = True

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any]:
        levels = np.maximum(power_to_db(self._average.value) + self._weights, DB_FLOOR)
        overall = power_to_db(np.sum(10.0 ** (levels / 10.0)))
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
    """YIN on the latest frame, with a voicing gate on level and confidence."""

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        fmin: float,
        fmax: float,
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
        # the integration window W: at least one longest period, and at least 25 ms for a stable estimate
        window = max(tau_max, math.ceil(0.025 * sample_rate))
        self.sample_rate, self.fmin, self.fmax, self.threshold = sample_rate, fmin, fmax, threshold
        self.min_confidence, self.min_level_dbfs, self.channel = min_confidence, min_level_dbfs, channel
        self._history = History(window + tau_max, 1)

    @property
    def ready(self) -> bool:
        return self._history.full

    def feed(self, block: np.ndarray) -> None:
        self._history.push(_select(block, self.channel))

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any]:
        frame = self._history.buffer[:, 0]
        level = float(rms_db(frame))
        result = yin(frame, self.sample_rate, self.fmin, self.fmax, self.threshold)
        voiced = level >= self.min_level_dbfs and result.confidence >= self.min_confidence
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
        if voiced:
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

    def snapshot(self, header: dict[str, Any]) -> dict[str, Any] | StreamChunk:
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
