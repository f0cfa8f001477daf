"""AudioAdapter: live audio analysis streams in the spirit of Friture's streaming API.

Six streams — levels, FFT spectrum, spectrogram, fractional-octave bands, pitch and the raw waveform (scope) —
over one of three sources: a real input device (``sounddevice``/PortAudio), a WAV file, or a generated test
signal, so every stream also runs where no sound card exists. Every stream takes the same source and pacing
options; the chunk schemas are in docs/adapters/audio.md and in each analyser (adapters/audio/analysers.py).
``analyse_stream`` runs any of the six over PCM frames the caller streams in (a browser's microphone, audio an
Elixir application receives): the same analysers through the same runner (adapters/audio/stream_input.py), so
its chunks equal the file source's for the same samples.

A device is opened only while a stream runs and closed when it ends, fails or is cancelled (the ``finally`` below);
``active_streams()`` shows what is open now and how recent streams ended, including PortAudio's own closed flag.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, cast

import numpy as np
from pydantic import BaseModel, Field

from python_worker import BaseAdapter, StreamChunk, ToolContext, tool

from . import runner
from .analysers import (
    LevelsAnalyser,
    OctaveAnalyser,
    PitchAnalyser,
    ScopeAnalyser,
    SpectrogramAnalyser,
    SpectrumAnalyser,
)
from .analyses import ANALYSES, Analysis, build_analyser, options_model, parse_options
from .sources import BlockSource, SignalSpec, SourceKind, list_input_devices, open_source
from .stream_input import InputSource

# the options every stream takes, declared once (their descriptions travel in the tools' JSON Schema)
Source = Annotated[SourceKind, Field(description="where audio comes from: 'device', 'file' or 'signal'")]
Device = Annotated[
    int | str | None, Field(description="source='device': PortAudio index or name ('pulse'); null = default input")
]
FilePath = Annotated[str | None, Field(description="source='file': path of a WAV file on the worker's machine")]
Signal = Annotated[SignalSpec | None, Field(description="source='signal': the test signal (default 440 Hz sine)")]
SampleRate = Annotated[
    int | None, Field(description="Hz; null = 48000 (signal), the file's rate, or the device's default")
]
Channels = Annotated[int | None, Field(description="null = 1 (signal, device) or all of the file's channels")]
BlockSize = Annotated[int, Field(description="frames per block read from the source")]
MaxRate = Annotated[
    float | None, Field(description="at most this many chunks per second of audio; 0/null = every block")
]
Duration = Annotated[float | None, Field(description="stop after this many seconds of audio; null = no limit")]
MaxChunks = Annotated[int | None, Field(description="stop after this many chunks; null = no limit")]
Realtime = Annotated[bool, Field(description="pace a file or signal source to the wall clock, like a device")]
Weighting = Annotated[Literal["A", "C", "Z"], Field(description="IEC 61672 frequency weighting")]
TimeWeighting = Annotated[Literal["fast", "slow"], Field(description="IEC 61672 time weighting: 125 ms or 1 s")]
Channel = Annotated[int | None, Field(description="analyse this channel; null = the mean of all channels")]
Format = Annotated[Literal["json", "npy"], Field(description="'npy': a float32 array chunk, scalars in metadata")]
Window = Annotated[
    Literal["hann", "hamming", "blackman", "blackmanharris", "flattop", "rectangular"], Field(description="FFT window")
]
Reduce = Annotated[Literal["max", "mean"], Field(description="how bins combine into a point")]
FMin = Annotated[float, Field(description="lowest frequency shown, Hz")]
FMax = Annotated[float | None, Field(description="highest frequency shown, Hz; null = Nyquist")]


class AudioAdapter(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()  # cooperative: a composite adapter (adapters.dashboard) inherits several adapters
        # names prefixed _streams: a composite shares one instance namespace with the other adapters
        self._streams_lock = threading.Lock()
        self._stream_ids = itertools.count(1)
        self._open_streams: dict[int, dict[str, Any]] = {}
        self._closed_streams: deque[dict[str, Any]] = deque(maxlen=32)

    # -- the common stream body ------------------------------------------------------------------------------
    def _stream(
        self,
        tool_name: str,
        make_analyser: Callable[[int, int], runner.Analyser],
        ctx: ToolContext | None,
        *,
        source: SourceKind,
        device: int | str | None,
        path: str | None,
        signal: SignalSpec | None,
        sample_rate: int | None,
        channels: int | None,
        block_size: int,
        max_rate_hz: float | None,
        duration_s: float | None,
        max_chunks: int | None,
        realtime: bool,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        runner.check_bounds(max_rate_hz, duration_s, max_chunks)
        src = open_source(
            source,
            device=device,
            path=path,
            signal=signal,
            block_size=block_size,
            sample_rate=sample_rate,
            channels=channels,
        )
        yield from self._run_source(
            tool_name, make_analyser, ctx, src, max_rate_hz=max_rate_hz, duration_s=duration_s,
            max_chunks=max_chunks, realtime=realtime,
        )  # fmt: skip

    def _run_source(
        self,
        tool_name: str,
        make_analyser: Callable[[int, int], runner.Analyser],
        ctx: ToolContext | None,
        src: BlockSource,
        *,
        max_rate_hz: float | None,
        duration_s: float | None,
        max_chunks: int | None,
        realtime: bool,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        """Open ``src``, run the analyser over it (listed in ``active_streams`` meanwhile), close it."""
        stream_id = next(self._stream_ids)
        outcome = "error"
        try:
            src.open()
            with self._streams_lock:
                self._open_streams[stream_id] = {
                    "id": stream_id,
                    "tool": tool_name,
                    "opened_at": time.time(),
                    **src.describe(),
                }
            analyser = make_analyser(src.sample_rate, src.channels)
            yield from runner.run(
                src,
                analyser,
                ctx,
                max_rate_hz=max_rate_hz,
                duration_s=duration_s,
                max_chunks=max_chunks,
                realtime=realtime,
            )
            outcome = "cancelled" if ctx is not None and ctx.cancelled else "finished"
        except GeneratorExit:  # closed at a yield: the caller cancelled or went away
            outcome = "cancelled"
            raise
        finally:
            src.close()
            with self._streams_lock:
                entry = self._open_streams.pop(stream_id, None)
                if entry is not None:
                    entry.update(src.describe(), closed_at=time.time(), outcome=outcome, released=src.released)
                    self._closed_streams.append(entry)

    # -- streams ---------------------------------------------------------------------------------------------
    @tool(supports_streaming=True)
    def stream_levels(
        self,
        source: Source = "signal",
        device: Device = None,
        path: FilePath = None,
        signal: Signal = None,
        sample_rate: SampleRate = None,
        channels: Channels = None,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 20.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        realtime: Realtime = True,
        time_weighting: TimeWeighting = "fast",
        weighting: Weighting = "Z",
        peak_hold_s: Annotated[float, Field(description="seconds a peak is held")] = 1.0,
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Per channel in dBFS: time-weighted level and its maximum, Leq, peak, C-weighted peak, held peak."""

        def make(rate: int, n: int) -> LevelsAnalyser:
            return LevelsAnalyser(rate, n, time_weighting=time_weighting, weighting=weighting, peak_hold_s=peak_hold_s)

        return cast(Iterator[dict[str, Any]], self._stream(  # its snapshots are dicts
            "stream_levels", make, ctx, source=source, device=device, path=path, signal=signal,
            sample_rate=sample_rate, channels=channels, block_size=block_size, max_rate_hz=max_rate_hz,
            duration_s=duration_s, max_chunks=max_chunks, realtime=realtime,
        ))  # fmt: skip

    @tool(supports_streaming=True)
    def stream_spectrum(
        self,
        source: Source = "signal",
        device: Device = None,
        path: FilePath = None,
        signal: Signal = None,
        sample_rate: SampleRate = None,
        channels: Channels = None,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 20.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        realtime: Realtime = True,
        fft_size: Annotated[int, Field(description="samples per FFT (the latest ones)")] = 4096,
        window: Window = "hann",
        weighting: Weighting = "Z",
        points: Annotated[
            int | None, Field(description="reduce to this many log-spaced points; null = every bin")
        ] = 256,
        reduce: Reduce = "max",
        fmin: FMin = 20.0,
        fmax: FMax = None,
        channel: Channel = None,
        format: Format = "json",
        response_time_s: Annotated[
            float | None, Field(description="exponential averaging of frames every fft_size/2 samples; null = none")
        ] = None,
        peak_decay_db_s: Annotated[
            float | None, Field(description="peak markers falling this many dB/s (0 = max hold); null = none")
        ] = None,
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        """FFT amplitude spectrum in dBFS (window, A/C/Z weighting, averaging, peak markers), its peak, reduced."""

        def make(rate: int, n: int) -> SpectrumAnalyser:
            return SpectrumAnalyser(
                rate, n, fft_size=fft_size, window=window, weighting=weighting, points=points, reduce=reduce,
                fmin=fmin, fmax=fmax, channel=channel, format=format, response_time_s=response_time_s,
                peak_decay_db_s=peak_decay_db_s,
            )  # fmt: skip

        return self._stream(
            "stream_spectrum", make, ctx, source=source, device=device, path=path, signal=signal,
            sample_rate=sample_rate, channels=channels, block_size=block_size, max_rate_hz=max_rate_hz,
            duration_s=duration_s, max_chunks=max_chunks, realtime=realtime,
        )  # fmt: skip

    @tool(supports_streaming=True)
    def stream_spectrogram(
        self,
        source: Source = "signal",
        device: Device = None,
        path: FilePath = None,
        signal: Signal = None,
        sample_rate: SampleRate = None,
        channels: Channels = None,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 10.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        realtime: Realtime = True,
        fft_size: Annotated[int, Field(description="samples per FFT frame")] = 2048,
        hop_s: Annotated[
            float | None, Field(description="seconds between frames (rows); null = fft_size/2 samples")
        ] = None,
        window: Window = "hann",
        weighting: Weighting = "Z",
        points: Annotated[
            int | None, Field(description="reduce each row to this many log-spaced points; null = every bin")
        ] = 256,
        reduce: Reduce = "max",
        fmin: FMin = 20.0,
        fmax: FMax = None,
        channel: Channel = None,
        format: Annotated[
            Literal["json", "npy"], Field(description="'npy' (default): a float32 array, frequencies in row 0")
        ] = "npy",
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        """A rolling spectrogram: every chunk holds the dB rows of the frames completed since the previous one."""

        def make(rate: int, n: int) -> SpectrogramAnalyser:
            return SpectrogramAnalyser(
                rate, n, fft_size=fft_size, hop_s=hop_s, window=window, weighting=weighting, points=points,
                reduce=reduce, fmin=fmin, fmax=fmax, channel=channel, format=format,
            )  # fmt: skip

        return self._stream(
            "stream_spectrogram", make, ctx, source=source, device=device, path=path, signal=signal,
            sample_rate=sample_rate, channels=channels, block_size=block_size, max_rate_hz=max_rate_hz,
            duration_s=duration_s, max_chunks=max_chunks, realtime=realtime,
        )  # fmt: skip

    @tool(supports_streaming=True)
    def stream_octave(
        self,
        source: Source = "signal",
        device: Device = None,
        path: FilePath = None,
        signal: Signal = None,
        sample_rate: SampleRate = None,
        channels: Channels = None,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 20.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        realtime: Realtime = True,
        bands_per_octave: Annotated[
            Literal[1, 2, 3, 6, 12, 24], Field(description="1 = octaves, 3 = third-octaves (IEC 61260, base 10)")
        ] = 3,
        fmin: Annotated[float, Field(description="lowest nominal band centre, Hz")] = 20.0,
        fmax: Annotated[float, Field(description="highest nominal band centre, Hz")] = 20000.0,
        weighting: Weighting = "Z",
        time_weighting: TimeWeighting = "fast",
        channel: Channel = None,
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Fractional-octave band levels in dB (IEC 61260 class 1 multirate bank, Fast/Slow, A/C/Z before the bank)."""

        def make(rate: int, n: int) -> OctaveAnalyser:
            return OctaveAnalyser(
                rate, n, bands_per_octave=bands_per_octave, fmin=fmin, fmax=fmax, weighting=weighting,
                time_weighting=time_weighting, channel=channel,
            )  # fmt: skip

        return cast(Iterator[dict[str, Any]], self._stream(  # its snapshots are dicts
            "stream_octave", make, ctx, source=source, device=device, path=path, signal=signal,
            sample_rate=sample_rate, channels=channels, block_size=block_size, max_rate_hz=max_rate_hz,
            duration_s=duration_s, max_chunks=max_chunks, realtime=realtime,
        ))  # fmt: skip

    @tool(supports_streaming=True)
    def stream_pitch(
        self,
        source: Source = "signal",
        device: Device = None,
        path: FilePath = None,
        signal: Signal = None,
        sample_rate: SampleRate = None,
        channels: Channels = None,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 20.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        realtime: Realtime = True,
        fmin: Annotated[float, Field(description="lowest pitch searched, Hz")] = 65.0,
        fmax: Annotated[float, Field(description="highest pitch searched, Hz (a tone above it is unvoiced)")] = 2000.0,
        frame_s: Annotated[
            float | None, Field(description="analysis frame, s (>= 2/fmin); null = 3/fmin (46 ms at 65 Hz)")
        ] = None,
        threshold: Annotated[float, Field(description="YIN absolute threshold on d'")] = 0.1,
        min_confidence: Annotated[float, Field(description="voicing gate: minimum confidence 0..1")] = 0.7,
        min_level_dbfs: Annotated[float, Field(description="voicing gate: minimum frame RMS, dBFS")] = -60.0,
        channel: Channel = None,
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Pitch by YIN with confidence, note name (A4 = 440 Hz) and cents; unvoiced frames have frequency null."""

        def make(rate: int, n: int) -> PitchAnalyser:
            return PitchAnalyser(
                rate, n, fmin=fmin, fmax=fmax, frame_s=frame_s, threshold=threshold, min_confidence=min_confidence,
                min_level_dbfs=min_level_dbfs, channel=channel,
            )  # fmt: skip

        return cast(Iterator[dict[str, Any]], self._stream(  # its snapshots are dicts
            "stream_pitch", make, ctx, source=source, device=device, path=path, signal=signal,
            sample_rate=sample_rate, channels=channels, block_size=block_size, max_rate_hz=max_rate_hz,
            duration_s=duration_s, max_chunks=max_chunks, realtime=realtime,
        ))  # fmt: skip

    @tool(supports_streaming=True)
    def stream_scope(
        self,
        source: Source = "signal",
        device: Device = None,
        path: FilePath = None,
        signal: Signal = None,
        sample_rate: SampleRate = None,
        channels: Channels = None,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 20.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        realtime: Realtime = True,
        points: Annotated[int, Field(description="at most this many samples per channel per chunk")] = 512,
        window_s: Annotated[float | None, Field(description="seconds of signal shown; null = one block")] = None,
        format: Format = "json",
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        """The latest waveform of every channel, decimated to at most `points` samples per channel."""
        if window_s is not None and window_s <= 0:
            raise ValueError(f"window_s must be > 0 (or null: one block), got {window_s}")

        def make(rate: int, n: int) -> ScopeAnalyser:
            frames = round(window_s * rate) if window_s is not None else block_size
            return ScopeAnalyser(rate, n, window_frames=frames, points=points, format=format)

        return self._stream(
            "stream_scope", make, ctx, source=source, device=device, path=path, signal=signal,
            sample_rate=sample_rate, channels=channels, block_size=block_size, max_rate_hz=max_rate_hz,
            duration_s=duration_s, max_chunks=max_chunks, realtime=realtime,
        )  # fmt: skip

    # -- the caller's own audio ----------------------------------------------------------------------------------
    @tool(supports_streaming=True)
    def analyse_stream(
        self,
        frames: Iterator[np.ndarray | bytes],
        sample_rate: Annotated[int, Field(description="Hz: the rate the frames were sampled at")],
        analysis: Annotated[Analysis, Field(description="which stream's chunks: stream_<analysis>'s")] = "levels",
        options: Annotated[
            dict[str, Any] | None,
            Field(
                description="the analysis options stream_<analysis> takes (e.g. pitch: fmin, fmax); null = its defaults"
            ),
        ] = None,
        channels: Annotated[int, Field(description="channels, interleaved in each frame")] = 1,
        block_size: BlockSize = 1024,
        max_rate_hz: MaxRate = 20.0,
        duration_s: Duration = None,
        max_chunks: MaxChunks = None,
        ctx: ToolContext | None = None,
    ) -> Iterator[dict[str, Any] | StreamChunk[Any]]:
        """Analyse PCM frames the caller streams (1-D float32 arrays in [-1, 1], or int16 little-endian bytes):
        the same chunks as the stream_<analysis> tool gives for a WAV file holding the same samples."""
        if analysis not in ANALYSES:
            raise ValueError(f"analysis must be one of {', '.join(ANALYSES)}, got {analysis!r}")
        model = _options_of(analysis)
        chosen = parse_options(analysis, model, options)
        runner.check_bounds(max_rate_hz, duration_s, max_chunks)
        src = InputSource(frames, "analyse_stream", block_size, sample_rate, channels)

        def make(rate: int, n: int) -> runner.Analyser:
            return build_analyser(analysis, rate, n, block_size, chosen)

        return self._run_source(
            "analyse_stream", make, ctx, src, max_rate_hz=max_rate_hz, duration_s=duration_s,
            max_chunks=max_chunks, realtime=False,
        )  # fmt: skip

    # -- unary -----------------------------------------------------------------------------------------------
    @tool
    def list_devices(self) -> list[dict[str, Any]]:
        """The audio input devices PortAudio sees (index, name, host_api, max_input_channels, ...)."""
        return list_input_devices()

    @tool
    def active_streams(self) -> dict[str, list[dict[str, Any]]]:
        """Streams with an open source now ("open"), and how the last 32 ended ("closed": outcome, released)."""
        with self._streams_lock:
            return {
                "open": [dict(e) for e in self._open_streams.values()],
                "closed": [dict(e) for e in self._closed_streams],
            }


@functools.cache
def _options_of(analysis: str) -> type[BaseModel]:
    """The options model of ``analysis``, built once from the signature of its ``stream_<analysis>`` tool."""
    return options_model(analysis, getattr(AudioAdapter, f"stream_{analysis}"))
