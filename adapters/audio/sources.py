"""Where audio comes from: a generated test signal, a WAV file or a real input device, behind one interface.

Every source is a :class:`BlockSource`: ``open()``, then ``read(timeout)`` returns the next block of
``(frames, channels)`` float samples (full scale ±1.0) until ``ended``, then ``close()``. Sources are context
managers and ``close()`` is idempotent, so a cancelled stream releases its file or device in a ``finally``.

- :class:`SignalSource` generates blocks on demand (never blocks, never ends unless bounded by the caller).
- :class:`FileSource` reads a WAV file through ``scipy.io.wavfile`` (memory-mapped where the format allows, so
  long files are not loaded at once); the mapping is dropped on ``close()``.
- :class:`DeviceSource` records an input device through ``sounddevice`` (PortAudio). PortAudio's callback thread
  puts blocks into a bounded queue; when the queue is full (the stream's consumer is slower than the device) the
  block is dropped and counted, and PortAudio's own input-overflow flags are counted too: ``overflows`` reports
  both, nothing is lost silently. ``sounddevice`` is imported only when a device is opened: without libportaudio2
  its import raises OSError, which becomes a :class:`SourceError` naming the other sources. PortAudio lists the
  devices when ``sounddevice`` is first imported, so a sound server started later is not seen by this process.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator
from scipy.io import wavfile

from python_worker.sdk.files import open_path, undecodable

from .signal.generators import SignalGenerator

SourceKind = Literal["device", "file", "signal"]
DEFAULT_SAMPLE_RATE = 48000
OTHER_SOURCES = "use source='file' (a WAV file, with path=...) or source='signal' (a generated test signal) instead"


class SourceError(RuntimeError):
    """A source cannot be opened or stopped delivering audio; the message says why and what to use instead."""


class SignalSpec(BaseModel):
    """The generated test signal of ``source='signal'`` (see :mod:`.signal.generators` for the formulas)."""

    # extra="allow" only so the validator below can name unknown keys; the schema still forbids them
    model_config = ConfigDict(
        strict=True, extra="allow", frozen=True, json_schema_extra={"additionalProperties": False}
    )

    kind: Literal["sine", "noise", "sweep", "silence"] = "sine"
    frequency_hz: float = 440.0  # the sine's frequency; the sweep's start
    level_dbfs: float = -6.0  # peak amplitude of sine and sweep (0 = full scale), RMS of noise
    end_frequency_hz: float = 8000.0  # the sweep's end
    sweep_s: float = 5.0  # duration of one sweep; it repeats
    seed: int = 0  # noise generator seed

    @model_validator(mode="after")
    def _no_unknown_fields(self) -> SignalSpec:
        # extra="forbid" would report a nested unknown key as an unknown *argument* 'signal': name the key instead
        if self.model_extra:
            known = ", ".join(type(self).model_fields)
            raise ValueError(f"unknown signal field(s) {', '.join(map(repr, self.model_extra))} (known: {known})")
        return self


class BlockSource(ABC):
    """A stream of audio blocks: ``open``, ``read`` until ``ended``, ``close``."""

    kind: str = ""
    live = False  # paced by hardware (a device); other sources produce as fast as they are read

    def __init__(self, block_size: int, sample_rate: int | None, channels: int | None) -> None:
        if not 16 <= block_size <= 1 << 16:
            raise ValueError(f"block_size must be between 16 and 65536 frames, got {block_size}")
        if sample_rate is not None and not 1000 <= sample_rate <= 384000:
            raise ValueError(f"sample_rate must be between 1000 and 384000 Hz, got {sample_rate}")
        if channels is not None and not 1 <= channels <= 32:
            raise ValueError(f"channels must be between 1 and 32, got {channels}")
        self.block_size = block_size
        self.sample_rate: int = sample_rate or DEFAULT_SAMPLE_RATE
        self.channels: int = channels or 1
        self.ended = False
        self.is_open = False
        self._closed = False

    @property
    def overflows(self) -> int:
        """Blocks lost so far (only a live device can lose any)."""
        return 0

    @property
    def released(self) -> bool:
        """True once ``close()`` has let go of the file or device."""
        return self._closed

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def read(self, timeout: float) -> np.ndarray | None:
        """The next ``(frames, channels)`` block, or None: nothing within ``timeout`` s (live) or ``ended``."""

    def _close(self) -> None:  # noqa: B027 - sources without resources have nothing to release
        pass

    def open(self) -> None:
        self._open()
        self.is_open = True

    def close(self) -> None:
        """Release the file or device; safe to call twice, and after a failed ``open()``."""
        if not self._closed:
            self._closed = True
            self.is_open = False
            self._close()

    def describe(self) -> dict[str, Any]:
        """What this source is, for ``active_streams``."""
        return {"source": self.kind, "sample_rate": self.sample_rate, "channels": self.channels}

    def __enter__(self) -> BlockSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SignalSource(BlockSource):
    kind = "signal"

    def __init__(self, spec: SignalSpec, block_size: int, sample_rate: int | None, channels: int | None) -> None:
        super().__init__(block_size, sample_rate, channels)
        self.spec = spec
        self._generator = SignalGenerator(
            spec.kind,
            self.sample_rate,
            frequency_hz=spec.frequency_hz,
            level_dbfs=spec.level_dbfs,
            end_frequency_hz=spec.end_frequency_hz,
            sweep_s=spec.sweep_s,
            seed=spec.seed,
        )

    def _open(self) -> None:
        pass

    def read(self, timeout: float) -> np.ndarray:
        mono = self._generator.next(self.block_size)
        return np.repeat(mono[:, None], self.channels, axis=1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "signal": self.spec.model_dump()}


def _to_float(data: np.ndarray) -> np.ndarray:
    """WAV sample values as floats with full scale ±1.0 (8-bit WAV is unsigned, offset 128)."""
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    if data.dtype == np.int32:  # 32-bit, and 24-bit which scipy returns left-justified in int32
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if data.dtype.kind == "f":
        return data.astype(np.float32)
    raise SourceError(f"unsupported WAV sample type {data.dtype}")


class FileSource(BlockSource):
    kind = "file"

    def __init__(self, path: str, block_size: int, sample_rate: int | None, channels: int | None) -> None:
        super().__init__(block_size, sample_rate, channels)
        self.path = path
        self._wanted_rate, self._wanted_channels = sample_rate, channels
        self._data: np.ndarray | None = None
        self._position = 0
        self.frames = 0

    def _open(self) -> None:
        # confined to KRAIT_DATA_ROOT like every path a caller names; a refusal is INVALID_ARGUMENT
        with open_path(self.path) as file:
            # scipy maps only a file it opens by name: the name of the descriptor just checked, not the path again
            by_fd = f"/proc/self/fd/{file.fileno()}"
            source: Any = by_fd if os.path.exists(by_fd) else file  # no /proc: read whole, without a map
            try:
                try:
                    rate, data = wavfile.read(source, mmap=True)  # the map outlives the descriptor
                except ValueError as exc:
                    if "mmap" not in str(exc):
                        raise
                    file.seek(0)
                    rate, data = wavfile.read(source)  # 24-bit files cannot be memory-mapped
            except (ValueError, OSError, EOFError) as exc:
                raise undecodable("path", self.path, f"a WAV file Krait can read ({_wav_problem(exc)})") from None
        if data.ndim == 1:
            data = data[:, None]
        if self._wanted_rate is not None and self._wanted_rate != rate:
            raise SourceError(
                f"{self.path!r} is sampled at {rate} Hz, not {self._wanted_rate} Hz: omit sample_rate or pass {rate}"
            )
        file_channels = data.shape[1]
        if self._wanted_channels is not None and self._wanted_channels > file_channels:
            raise SourceError(
                f"{self.path!r} has {file_channels} channel(s), fewer than channels={self._wanted_channels}"
            )
        self.sample_rate = int(rate)
        self.channels = self._wanted_channels or file_channels
        self._data = data
        self.frames = data.shape[0]

    def read(self, timeout: float) -> np.ndarray | None:
        if self._data is None or self._position >= self.frames:
            self.ended = True
            return None
        end = min(self._position + self.block_size, self.frames)
        block = _to_float(self._data[self._position : end, : self.channels])  # a copy: no view keeps the map
        self._position = end
        return block

    def _close(self) -> None:
        # the memory map lives as long as the array: dropping the only reference unmaps the file
        self._data = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path}


def _wav_problem(exc: BaseException) -> str:
    """What is wrong with a WAV file, in words of our own: scipy's messages quote the file's bytes (``File format
    b'root' not understood``), which must never reach the caller."""
    text = str(exc)
    if text.startswith("Unknown wave file format"):
        return "an encoding other than PCM or IEEE float"
    if text.startswith("Unsupported bit depth"):
        return "an unsupported bit depth"
    if isinstance(exc, (EOFError, OSError)) or "end of file" in text.lower():
        return "it ends too soon"
    return "no RIFF/WAVE header" if text.startswith(("File format", "Not a WAV file")) else "a damaged header"


def import_sounddevice() -> ModuleType:
    """``import sounddevice``, turning a missing PortAudio library into a clear :class:`SourceError`."""
    try:
        import sounddevice
    except OSError as exc:
        raise SourceError(
            f"PortAudio is not available ({exc}): install the libportaudio2 system package for device input, or "
            f"{OTHER_SOURCES}"
        ) from None
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """The input devices PortAudio knows (empty when there are none)."""
    sd = import_sounddevice()
    try:
        default_input = sd.default.device[0]
        devices = sd.query_devices()
        host_apis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise SourceError(f"PortAudio cannot list devices: {exc}") from None
    return [
        {
            "index": int(d["index"]),
            "name": d["name"],
            "host_api": host_apis[d["hostapi"]]["name"],
            "max_input_channels": int(d["max_input_channels"]),
            "default_sample_rate": float(d["default_samplerate"]),
            "is_default": int(d["index"]) == default_input,
        }
        for d in devices
        if d["max_input_channels"] > 0
    ]


class DeviceSource(BlockSource):
    kind = "device"
    live = True
    STALL_S = 5.0  # a running device that delivers nothing for this long has failed

    def __init__(
        self,
        device: int | str | None,
        block_size: int,
        sample_rate: int | None,
        channels: int | None,
        queue_s: float = 2.0,
    ) -> None:
        super().__init__(block_size, sample_rate, channels)
        self.device = device
        self._wanted_rate = sample_rate
        # room for queue_s seconds of audio: enough to ride out a consumer's hiccup, bounded for a stalled one
        self._queue: queue.Queue[np.ndarray] = queue.Queue(
            maxsize=max(4, round(queue_s * self.sample_rate / block_size))
        )
        self._stream: Any = None
        self.dropped = 0  # blocks dropped because the queue was full
        self.xruns = 0  # PortAudio input overflows (the OS buffer overran before the callback ran)
        self.device_name = ""
        self.stream_closed = True  # PortAudio's own flag, recorded when the stream is closed
        self._last_data = 0.0

    @property
    def overflows(self) -> int:
        return self.dropped + self.xruns

    def _resolve(self, sd: ModuleType) -> dict[str, Any]:
        try:
            return sd.query_devices(self.device, kind="input")
        except ValueError as exc:  # no device matches the name or index
            names = [f"{d['index']}: {d['name']}" for d in list_input_devices()]
            available = "; ".join(names) if names else "none"
            raise SourceError(f"{exc} (input devices: {available}); or {OTHER_SOURCES}") from None
        except sd.PortAudioError:  # no default input: either no device at all, or none chosen as default
            names = [f"{d['index']}: {d['name']}" for d in list_input_devices()]
            if names:
                raise SourceError(f"there is no default input device: pass device= one of {'; '.join(names)}") from None
            raise SourceError(f"no audio input device is available on this machine; {OTHER_SOURCES}") from None

    def _open(self) -> None:
        sd = import_sounddevice()
        info = self._resolve(sd)
        if info["max_input_channels"] < self.channels:
            raise SourceError(
                f"input device {info['name']!r} has {info['max_input_channels']} channel(s), fewer than "
                f"channels={self.channels}"
            )
        self.device_name = info["name"]
        if self._wanted_rate is None:
            self.sample_rate = int(info["default_samplerate"])
        try:
            self._stream = sd.InputStream(
                device=info["index"],
                channels=self.channels,
                samplerate=self.sample_rate,
                blocksize=self.block_size,
                dtype="float32",
                callback=self._on_audio,
            )
            self.stream_closed = False
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self.close()
            raise SourceError(f"cannot open input device {info['name']!r}: {exc}") from None
        self._last_data = time.monotonic()

    def _on_audio(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's callback, on its own thread: never block here."""
        if status.input_overflow:
            self.xruns += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self.dropped += 1

    def read(self, timeout: float) -> np.ndarray | None:
        try:
            block = self._queue.get(timeout=timeout)
        except queue.Empty:
            if time.monotonic() - self._last_data > self.STALL_S:
                raise SourceError(
                    f"input device {self.device_name!r} delivered no audio for {self.STALL_S:g} s"
                ) from None
            return None
        self._last_data = time.monotonic()
        return block

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(ignore_errors=True)  # Pa_CloseStream aborts a running stream first
            self.stream_closed = bool(stream.closed)
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    @property
    def released(self) -> bool:
        return self._closed and self.stream_closed

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": self.device_name or self.device,
            "dropped_blocks": self.dropped,
            "input_overflows": self.xruns,
        }


def open_source(
    source: SourceKind,
    *,
    device: int | str | None,
    path: str | None,
    signal: SignalSpec | None,
    block_size: int,
    sample_rate: int | None,
    channels: int | None,
) -> BlockSource:
    """The source for the stream's options (not opened yet); options of another source are an error."""
    option_of = {"device": "device", "file": "path", "signal": "signal"}
    if source not in option_of:
        raise ValueError(f"source must be 'device', 'file' or 'signal', got {source!r}")
    for (kind, name), value in zip(option_of.items(), (device, path, signal), strict=True):
        if value is not None and kind != source:
            raise ValueError(f"{name}= goes with source={kind!r}, not with source={source!r}")
    if source == "signal":
        return SignalSource(signal or SignalSpec(), block_size, sample_rate, channels)
    if source == "file":
        if not path:
            raise ValueError("source='file' needs path= (a WAV file on the worker's machine)")
        return FileSource(path, block_size, sample_rate, channels)
    return DeviceSource(device, block_size, sample_rate, channels)
