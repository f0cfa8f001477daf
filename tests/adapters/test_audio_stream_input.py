"""analyse_stream through a real worker over gRPC (the Python Client's ``input=``, ExecuteToolDuplex): PCM frames
the caller streams give the same chunks as the file source on the same samples, whatever the frame size; int16
bytes and float32 arrays agree; a bad frame ends the call INVALID_ARGUMENT naming the item; a bounded analysis
stops pulling an endless input."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from scipy.io import wavfile

from python_worker.client import Chunk, Client, KraitError
from tests.workers import running_worker

ADAPTER = "adapters.audio:AudioAdapter"
RATE = 48000
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with running_worker(ADAPTER) as worker, Client(worker.target, timeout=60) as c:
        yield c


def _samples(seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    """int16 samples: a 440 Hz tone with a 3 kHz partial and a little noise (a second channel an octave up)."""
    t = np.arange(round(seconds * RATE)) / RATE
    rng = np.random.default_rng(7)
    columns = []
    for c in range(channels):
        f = 440.0 * 2**c
        x = 0.5 * np.sin(2 * np.pi * f * t) + 0.05 * np.sin(2 * np.pi * 3000 * t) + 0.01 * rng.standard_normal(len(t))
        columns.append(np.round(x * 32767).astype(np.int16))
    return np.stack(columns, axis=1) if channels > 1 else columns[0]


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 16-bit WAV file and its samples."""
    samples = _samples()
    path = tmp_path_factory.mktemp("wav") / "tone.wav"
    wavfile.write(path, RATE, samples)
    return path, samples


def as_float(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1], as a 16-bit WAV file reads (and as the worker converts int16 frames)."""
    return samples.astype(np.float32) / np.float32(32768.0)


def float_frames(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    flat = as_float(samples).reshape(-1)  # channels interleaved
    per = size * (samples.shape[1] if samples.ndim == 2 else 1)
    return (flat[i : i + per] for i in range(0, len(flat), per))


def int16_frames(samples: np.ndarray, size: int) -> Iterator[bytes]:
    flat = samples.astype("<i2").reshape(-1)
    per = size * (samples.shape[1] if samples.ndim == 2 else 1)
    return (flat[i : i + per].tobytes() for i in range(0, len(flat), per))


def payloads(chunks: list[Chunk]) -> list[Any]:
    assert chunks[-1].is_final and chunks[-1].data is None  # the synthetic final chunk
    return [(c.data, dict(c.metadata)) if isinstance(c.data, np.ndarray) else c.data for c in chunks[:-1]]


def from_file(client: Client, analysis: str, path: Path, options: dict[str, Any], **bounds: Any) -> list[Any]:
    args = {"source": "file", "path": str(path), "realtime": False, **options, **bounds}
    return payloads(list(client.stream(f"stream_{analysis}", args)))


def from_frames(
    client: Client, frames: Iterator[Any], analysis: str, options: dict[str, Any], **args: Any
) -> list[Any]:
    call = {"sample_rate": RATE, "analysis": analysis, "options": options, **args}
    return payloads(list(client.stream("analyse_stream", call, input=frames)))


def assert_same(left: Any, right: Any, where: str = "chunk") -> None:
    """Equal, floats within a tolerance far below the chunks' rounding (0.01 dB, 1e-5 for samples)."""
    if isinstance(left, tuple):  # an npy chunk: (array, metadata)
        np.testing.assert_allclose(left[0], right[0], rtol=1e-6, atol=1e-6, err_msg=where)
        keys = set(left[1]) | set(right[1])
        for key in keys:
            a, b = left[1].get(key), right[1].get(key)
            try:
                assert math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6), f"{where}.{key}: {a} != {b}"
            except (TypeError, ValueError):
                assert a == b, f"{where}.{key}: {a!r} != {b!r}"
        return
    if isinstance(left, dict):
        assert isinstance(right, dict) and left.keys() == right.keys(), f"{where}: keys {left.keys()} != {right}"
        for key in left:
            assert_same(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list):
        assert isinstance(right, list) and len(left) == len(right), f"{where}: {len(left)} != {len(right)} values"
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(left, float) and isinstance(right, (int, float)):
        assert math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-6), f"{where}: {left} != {right}"
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


ANALYSES = {
    "levels": {"weighting": "A"},
    "spectrum": {"points": 64, "peak_decay_db_s": 30.0},
    "pitch": {},
    "octave": {"bands_per_octave": 1},
    "scope": {"points": 64},
    "spectrogram": {"points": 32, "format": "npy"},
}


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_frames_of_any_size_give_the_file_sources_chunks(
    client: Client, tone: tuple[Path, np.ndarray], analysis: str
) -> None:
    path, samples = tone
    options = ANALYSES[analysis]
    expected = from_file(client, analysis, path, options, max_rate_hz=20.0)
    assert len(expected) >= 10  # a second at 20 chunks/s (spectrum/spectrogram need a full FFT first)
    # 1024-frame blocks are read from the file: frames of other sizes straddle them, one frame holds them all
    for size in (100, 1000, 4097, len(samples)):
        got = from_frames(client, float_frames(samples, size), analysis, options, max_rate_hz=20.0)
        assert len(got) == len(expected), f"frames of {size}"
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same(a, b, f"frames of {size}: chunk {i}")


def test_int16_bytes_and_float32_arrays_agree(client: Client, tone: tuple[Path, np.ndarray]) -> None:
    _, samples = tone
    as_bytes = from_frames(client, int16_frames(samples, 333), "pitch", {}, max_rate_hz=0)
    as_arrays = from_frames(client, float_frames(samples, 1500), "pitch", {}, max_rate_hz=0)
    assert len(as_bytes) == len(as_arrays) > 40
    for i, (a, b) in enumerate(zip(as_bytes, as_arrays, strict=True)):
        assert_same(a, b, f"chunk {i}")
    voiced = [c["frequency_hz"] for c in as_bytes if c["voiced"]]
    # the tone's pitch (the inharmonic 3 kHz partial pulls YIN's estimate ~11 cents low)
    assert voiced and all(abs(1200 * math.log2(f / 440.0)) < 15 for f in voiced)


def test_interleaved_stereo_frames_give_the_files_chunks(client: Client, tmp_path: Path) -> None:
    samples = _samples(0.5, channels=2)
    path = tmp_path / "stereo.wav"
    wavfile.write(path, RATE, samples)
    expected = from_file(client, "levels", path, {}, max_rate_hz=10.0)
    got = from_frames(client, int16_frames(samples, 700), "levels", {}, channels=2, max_rate_hz=10.0)
    assert len(got) == len(expected) and len(got[-1]["rms_dbfs"]) == 2
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_same(a, b, f"chunk {i}")


GOOD = np.zeros(256, dtype=np.float32)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (np.zeros((128, 2), dtype=np.float32), "2-D array"),
        (np.zeros(256, dtype=np.float64), "float64 array"),
        (b"\x00\x01\x02", "3 bytes"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
    ],
    ids=["2-D", "float64", "odd-bytes", "nan"],
)
def test_a_bad_frame_ends_the_call_naming_the_item(client: Client, bad: Any, problem: str) -> None:
    frames = [GOOD, GOOD.tobytes()[:512], bad, GOOD]
    with pytest.raises(KraitError) as info:
        from_frames(client, iter(frames), "levels", {}, max_rate_hz=0)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "analyse_stream: input item 2: " in info.value.message and problem in info.value.message
    # the worker is fine afterwards
    assert from_frames(client, iter([GOOD] * 8), "levels", {}, max_rate_hz=0)


def test_a_bad_option_is_named(client: Client) -> None:
    with pytest.raises(KraitError) as info:
        from_frames(client, iter([GOOD]), "pitch", {"fmn": 80})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.fmn: not an option of analysis='pitch'" in info.value.message and "fmin" in info.value.message


def test_a_bounded_analysis_stops_pulling_an_endless_input(client: Client) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[np.ndarray]:
        t = 0
        while True:
            next(pulled)
            yield (0.5 * np.sin(2 * np.pi * 440.0 * (t + np.arange(480)) / RATE)).astype(np.float32)
            t += 480

    chunks = from_frames(client, endless(), "levels", {}, duration_s=1.0, max_rate_hz=4.0)
    assert chunks[-1]["t_s"] == pytest.approx(1.0)
    # 100 frames make the second; the caller may have sent at most one credit window (1024 items) ahead
    assert 100 <= next(pulled) <= 100 + 1024 + 1


def test_the_stream_is_listed_and_closed(client: Client) -> None:
    from_frames(client, float_frames(_samples(0.2), 512), "levels", {})
    streams = client.execute("active_streams")
    last = [e for e in streams["closed"] if e["tool"] == "analyse_stream"][-1]
    assert last["source"] == "input" and last["outcome"] == "finished" and last["items"] == math.ceil(9600 / 512)
