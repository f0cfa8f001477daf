"""The audio streams through a real worker over gRPC: generated signals, WAV files, bounds, rate limits,
cancellation that releases the file, and clear errors (bad options, no device, no PortAudio)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from scipy.io import wavfile

from python_worker.client import Client, KraitError
from tests.support import eventually
from tests.workers import ROOT, Worker, running_worker, wait_ready

ADAPTER = "adapters.audio:AudioAdapter"
PROMPT = 2.0  # "promptly": the bound for a cancelled stream to release its source
FAST = {"realtime": False}  # analyse as fast as the consumer reads: the tests need no wall-clock pacing


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with running_worker(ADAPTER) as worker, Client(worker.target, timeout=30) as c:
        yield c


def data(client: Client, tool: str, **args: Any) -> list[Any]:
    """Every data chunk of a bounded stream (the final synthetic chunk left out)."""
    chunks = list(client.execute_stream(tool, **args))
    assert chunks[-1].is_final and chunks[-1].data is None  # the streams end with the synthetic final chunk
    return [c.data for c in chunks[:-1]]


def signal(kind: str = "sine", **spec: Any) -> dict[str, Any]:
    return {"kind": kind, **spec}


def wait_closed(client: Client, tool: str, timeout: float = PROMPT) -> dict[str, Any]:
    """Poll active_streams until no stream is open; return how the last one of ``tool`` ended."""

    def closed() -> dict[str, Any]:
        streams = client.execute("active_streams")
        ended = [e for e in streams["closed"] if e["tool"] == tool]
        assert not streams["open"] and ended, f"a {tool} stream is still open: {streams}"
        return ended[-1]

    return eventually(closed, timeout=timeout, interval=0.02)


# -- levels -----------------------------------------------------------------------------------------------------
def test_levels_of_a_full_scale_sine(client: Client) -> None:
    chunks = data(client, "stream_levels", signal=signal(level_dbfs=0.0, frequency_hz=1000.0), duration_s=1.0, **FAST)
    last = chunks[-1]
    assert last["rms_dbfs"] == [pytest.approx(-3.01, abs=0.05)]  # Fast-weighted, settled after 8 time constants
    assert last["leq_dbfs"] == [pytest.approx(-3.01, abs=0.02)]
    assert last["peak_dbfs"] == [pytest.approx(0.0, abs=0.01)]
    assert last["peak_hold_dbfs"] == [pytest.approx(0.0, abs=0.01)]
    assert (last["time_weighting"], last["weighting"], last["overflows"]) == ("fast", "Z", 0)
    assert last["t_s"] == pytest.approx(1.0, abs=1024 / 48000)


def test_levels_per_channel_and_a_weighting(client: Client) -> None:
    chunks = data(
        client, "stream_levels", signal=signal(frequency_hz=100.0, level_dbfs=0.0), channels=2, weighting="A",
        time_weighting="slow", duration_s=2.0, **FAST,
    )  # fmt: skip
    last = chunks[-1]
    # A(100 Hz) = -19.1 dB (IEC 61672 table): the A-weighted level of a full-scale 100 Hz sine
    assert last["leq_dbfs"] == [pytest.approx(-3.01 - 19.14, abs=0.1)] * 2
    assert len(last["rms_dbfs"]) == 2 and last["time_weighting"] == "slow"


# -- spectrum ---------------------------------------------------------------------------------------------------
def test_spectrum_peak_and_reduction(client: Client) -> None:
    chunks = data(
        client, "stream_spectrum", signal=signal(frequency_hz=1234.5, level_dbfs=-6.0), points=64, max_chunks=3, **FAST
    )
    assert len(chunks) == 3
    chunk = chunks[-1]
    assert chunk["peak_frequency_hz"] == pytest.approx(1234.5, abs=0.5)
    assert chunk["peak_db"] == pytest.approx(-6.02 - 3.01, abs=0.3)
    assert len(chunk["frequencies_hz"]) == len(chunk["magnitudes_db"]) == 64
    assert chunk["frequencies_hz"][0] > 20 and chunk["frequencies_hz"][-1] < 24000
    loudest = int(np.argmax(chunk["magnitudes_db"]))
    assert abs(math.log(chunk["frequencies_hz"][loudest] / 1234.5)) < math.log(24000 / 20) / 64  # within one band
    assert (chunk["fft_size"], chunk["window"], chunk["weighting"]) == (4096, "hann", "Z")


def test_spectrum_full_resolution_a_weighted_as_npy(client: Client) -> None:
    chunks = list(
        client.execute_stream(
            "stream_spectrum", signal=signal(frequency_hz=100.0, level_dbfs=0.0), points=None, weighting="A",
            window="blackmanharris", fmin=0.0, format="npy", max_chunks=1, **FAST,
        )
    )  # fmt: skip
    chunk = chunks[0]
    assert chunk.content_type == "application/x-npy"
    frequencies, magnitudes = chunk.data
    assert chunk.data.dtype == np.float32 and len(frequencies) == 4096 // 2 + 1
    assert float(chunk.metadata["peak_frequency_hz"]) == pytest.approx(100.0, abs=0.3)
    assert float(chunk.metadata["peak_db"]) == pytest.approx(-3.01 - 19.14, abs=0.3)  # A(100 Hz) = -19.1 dB
    assert float(np.max(magnitudes)) == pytest.approx(float(chunk.metadata["peak_db"]), abs=0.5)


# -- octave bands -----------------------------------------------------------------------------------------------
def test_third_octave_bands_of_a_1_khz_tone(client: Client) -> None:
    chunk = data(client, "stream_octave", signal=signal(frequency_hz=1000.0, level_dbfs=-6.0), duration_s=1.0, **FAST)[
        -1
    ]
    labels, levels = chunk["band_labels"], chunk["band_levels_db"]
    assert len(labels) == len(levels) == len(chunk["centre_frequencies_hz"]) == 31
    assert labels[int(np.argmax(levels))] == "1k"
    assert levels[labels.index("1k")] == pytest.approx(-9.03, abs=0.1)
    assert levels[labels.index("1.25k")] < -9.03 - 15  # a neighbour band sees the tone far down its skirt
    assert chunk["overall_db"] == pytest.approx(-9.03, abs=0.2)
    assert chunk["centre_frequencies_hz"][labels.index("1k")] == 1000.0


def test_octave_bands_of_noise_and_a_weighting(client: Client) -> None:
    chunk = data(
        client, "stream_octave", signal=signal("noise", level_dbfs=-20.0), bands_per_octave=1, fmin=31.5,
        fmax=16000.0, time_weighting="slow", duration_s=3.0, **FAST,
    )[-1]  # fmt: skip
    assert chunk["band_labels"] == ["31.5", "63", "125", "250", "500", "1k", "2k", "4k", "8k", "16k"]
    levels = np.array(chunk["band_levels_db"])
    # white noise: equal power per Hz, so each octave holds 3 dB more than the one below
    assert np.diff(levels[3:9]) == pytest.approx([3.01] * 5, abs=0.6)
    weighted = data(
        client, "stream_octave", signal=signal("noise", level_dbfs=-20.0), bands_per_octave=1, fmin=31.5,
        fmax=16000.0, time_weighting="slow", weighting="A", duration_s=3.0, **FAST,
    )[-1]  # fmt: skip
    # A weighting of octave bands: the band level plus A at the band centre (-26.2 dB at 63 Hz, +1.2 at 2 kHz)
    assert weighted["band_levels_db"][1] - levels[1] == pytest.approx(-26.2, abs=0.05)
    assert weighted["band_levels_db"][6] - levels[6] == pytest.approx(1.2, abs=0.05)


# -- pitch ------------------------------------------------------------------------------------------------------
def test_pitch_of_a_tone_with_note_and_cents(client: Client) -> None:
    chunks = data(client, "stream_pitch", signal=signal(frequency_hz=445.0), max_chunks=5, **FAST)
    for chunk in chunks:
        assert chunk["voiced"] and chunk["note"] == "A4"
        assert chunk["frequency_hz"] == pytest.approx(445.0, abs=0.3)
        assert chunk["cents"] == pytest.approx(19.6, abs=1.5)
        assert chunk["confidence"] > 0.95
        assert chunk["level_dbfs"] == pytest.approx(-9.03, abs=0.1)


def test_pitch_is_null_when_unvoiced(client: Client) -> None:
    for spec in (signal("noise", level_dbfs=-10.0), signal("silence")):
        chunks = data(client, "stream_pitch", signal=spec, max_chunks=5, **FAST)
        assert [c["frequency_hz"] for c in chunks] == [None] * 5
        assert [c["note"] for c in chunks] == [None] * 5
        assert not any(c["voiced"] for c in chunks)
    assert chunks[0]["level_dbfs"] == -120.0  # silence sits on the documented floor


def test_pitch_follows_a_sweep(client: Client) -> None:
    chunks = data(
        client, "stream_pitch", signal=signal("sweep", frequency_hz=100.0, end_frequency_hz=800.0, sweep_s=2.0),
        duration_s=1.9, max_rate_hz=5.0, **FAST,
    )  # fmt: skip
    assert len(chunks) >= 8
    for chunk in chunks:
        # the frame ends at t_s and spans ~45 ms, so compare with the sweep ~22 ms earlier
        expected = 100.0 * 8.0 ** ((chunk["t_s"] - 0.0225) / 2.0)
        assert chunk["frequency_hz"] == pytest.approx(expected, rel=0.02)


# -- scope ------------------------------------------------------------------------------------------------------
def test_scope_decimates_the_latest_samples(client: Client) -> None:
    chunk = data(
        client, "stream_scope", signal=signal(frequency_hz=100.0, level_dbfs=-6.02), channels=2, window_s=0.1,
        points=400, max_chunks=2, **FAST,
    )[-1]  # fmt: skip
    assert chunk["decimation"] == 12 and chunk["sample_rate_hz"] == 4000.0 and chunk["window_s"] == 0.1
    left, right = chunk["samples"]
    assert len(left) == len(right) == 400 and left == right
    assert max(left) == pytest.approx(0.5, abs=0.01)
    npy = next(iter(client.execute_stream("stream_scope", points=256, max_chunks=1, format="npy", **FAST)))
    assert npy.data.shape == (1, 256) and npy.data.dtype == np.float32
    assert npy.metadata["decimation"] == "4" and npy.metadata["index"] == "0"


# -- bounds and rate ------------------------------------------------------------------------------------------------
def test_rate_limit_is_in_audio_time(client: Client) -> None:
    chunks = data(client, "stream_levels", duration_s=2.0, max_rate_hz=10.0, **FAST)
    times = [c["t_s"] for c in chunks]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert min(np.diff(times)) >= 0.1 - 1e-6  # never faster than max_rate_hz
    assert 15 <= len(chunks) <= 20  # 2 s at <= 10/s, on 21.3 ms block boundaries
    every_block = data(client, "stream_levels", duration_s=0.5, max_rate_hz=0, block_size=480, **FAST)
    assert [c["t_s"] for c in every_block] == pytest.approx([0.01 * (i + 1) for i in range(50)])


def test_max_chunks_and_duration_bounds(client: Client) -> None:
    assert len(data(client, "stream_levels", max_chunks=7, **FAST)) == 7
    chunks = data(client, "stream_levels", duration_s=0.25, max_rate_hz=0, **FAST)
    assert chunks[-1]["t_s"] == pytest.approx(0.25)  # the last block is cut at the bound


def test_realtime_signal_is_paced_like_a_device(client: Client) -> None:
    started = time.monotonic()
    chunks = data(client, "stream_levels", duration_s=0.5, max_rate_hz=0)  # realtime is the default
    assert time.monotonic() - started >= 0.45  # 0.5 s of audio cannot arrive before 0.5 s have passed
    assert chunks[-1]["t_s"] == pytest.approx(0.5)


# -- WAV files --------------------------------------------------------------------------------------------------
def _write_wav(path: Path, rate: int = 44100, seconds: float = 1.0) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440.0 * t)  # -9.03 dBFS RMS
    right = 0.25 * np.sin(2 * np.pi * 1000.0 * t)  # -15.05 dBFS RMS
    wavfile.write(path, rate, np.round(np.column_stack([left, right]) * 32767).astype(np.int16))
    return path


def test_wav_file_levels_per_channel_until_its_end(client: Client, tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "tones.wav")
    chunks = data(client, "stream_levels", source="file", path=str(wav), max_rate_hz=0, **FAST)
    assert len(chunks) == math.ceil(44100 / 1024)  # one chunk per block, then the file ends
    assert chunks[-1]["t_s"] == pytest.approx(1.0)
    # Leq over one full block (the last one holds just 68 samples: a fraction of a period)
    assert chunks[-2]["leq_dbfs"] == [pytest.approx(-9.03, abs=0.1), pytest.approx(-15.05, abs=0.1)]
    pitch = data(client, "stream_pitch", source="file", path=str(wav), channel=0, max_chunks=3, **FAST)
    assert {c["note"] for c in pitch} == {"A4"}
    right = data(client, "stream_spectrum", source="file", path=str(wav), channel=1, max_chunks=1, **FAST)[0]
    assert right["peak_frequency_hz"] == pytest.approx(1000.0, abs=0.5)
    first = data(client, "stream_levels", source="file", path=str(wav), channels=1, max_chunks=1, **FAST)[0]
    assert len(first["rms_dbfs"]) == 1


def test_wav_file_errors_are_clear(client: Client, tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "tones.wav")
    with pytest.raises(KraitError, match=r"sampled at 44100 Hz, not 48000 Hz"):
        data(client, "stream_levels", source="file", path=str(wav), sample_rate=48000)
    with pytest.raises(KraitError, match=r"has 2 channel\(s\), fewer than channels=3"):
        data(client, "stream_levels", source="file", path=str(wav), channels=3)
    with pytest.raises(KraitError, match="WAV file not found"):
        data(client, "stream_levels", source="file", path=str(tmp_path / "missing.wav"))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(KraitError, match=r"cannot read .* as a WAV file"):
        data(client, "stream_levels", source="file", path=str(tmp_path / "text.wav"))
    with pytest.raises(KraitError, match=r"source='file' needs path="):
        data(client, "stream_levels", source="file")


def _mapped(pid: int, path: Path) -> bool:
    """Whether the process has ``path`` open or memory-mapped."""
    process = psutil.Process(pid)
    names = {m.path for m in process.memory_maps()} | {f.path for f in process.open_files()}
    return str(path) in names


def test_cancelling_a_file_stream_releases_the_file(tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "long.wav", seconds=30.0)
    with running_worker(ADAPTER) as worker, Client(worker.target) as client:
        stream = client.execute_stream("stream_levels", source="file", path=str(wav))  # realtime: 30 s
        assert next(stream).data["index"] == 0
        assert _mapped(worker.process.pid, wav)
        opened = client.execute("active_streams")["open"]
        assert [(e["tool"], e["source"], e["path"]) for e in opened] == [("stream_levels", "file", str(wav))]
        stream.close()
        ended = wait_closed(client, "stream_levels")
        assert ended["outcome"] == "cancelled" and ended["released"] is True
        assert not _mapped(worker.process.pid, wav)


@pytest.mark.parametrize("tool", ["stream_levels", "stream_spectrum", "stream_octave", "stream_pitch", "stream_scope"])
def test_cancelling_any_stream_closes_its_source_promptly(client: Client, tool: str) -> None:
    stream = client.execute_stream(tool)  # a real-time signal with no bound: runs until cancelled
    next(stream)
    stream.close()
    ended = wait_closed(client, tool)
    assert ended["outcome"] == "cancelled" and ended["released"] is True
    assert ended["closed_at"] - ended["opened_at"] < 10  # it did not run to some other bound


# -- bad options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("stream_levels", {"signal": {"kind": "sine", "freq": 3}}, r"unknown signal field\(s\) 'freq'"),
        ("stream_levels", {"signal": {"kind": "square"}}, r"argument 'signal'\['kind'\]"),
        ("stream_levels", {"path": "x.wav"}, r"path= goes with source='file', not with source='signal'"),
        ("stream_levels", {"source": "mic"}, r"argument 'source'"),
        ("stream_levels", {"block_size": 8}, r"block_size must be between 16 and 65536"),
        ("stream_levels", {"max_rate_hz": -1.0}, r"max_rate_hz must be >= 0"),
        ("stream_levels", {"duration_s": 0.0}, r"duration_s must be > 0"),
        ("stream_spectrum", {"fft_size": 8}, r"fft_size must be between 16"),
        ("stream_spectrum", {"fmax": 30000.0}, r"fmax <= 24000.0 Hz"),
        ("stream_spectrum", {"window": "kaiser"}, r"argument 'window'"),
        ("stream_pitch", {"channel": 1}, r"channel must be between 0 and 0"),
        ("stream_pitch", {"fmin": 500.0, "fmax": 100.0}, r"need 0 < fmin < fmax"),
        ("stream_octave", {"bands_per_octave": 5}, r"argument 'bands_per_octave'"),
        ("stream_octave", {"fmin": 30000.0, "fmax": 40000.0}, r"no 1/3-octave band"),
        ("stream_scope", {"window_s": -1.0}, r"window_s must be > 0"),
        ("stream_levels", {"signal": {"kind": "sine", "frequency_hz": 30000.0}}, r"frequency_hz must be in"),
    ],
)
def test_bad_options_are_named(client: Client, tool: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(KraitError, match=message):
        data(client, tool, max_chunks=1, **FAST, **args)
    assert not client.execute("active_streams")["open"]


# -- no device, no PortAudio ------------------------------------------------------------------------------------
def test_device_stream_without_any_device_names_the_other_sources(tmp_path: Path) -> None:
    # no sound server reachable (and no sound card on a test machine): PortAudio finds no input device
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "PULSE_SERVER": f"unix:{tmp_path}/no-server"}
    with running_worker(ADAPTER, env=env) as worker, Client(worker.target) as client:
        if client.execute("list_devices"):
            pytest.skip("this machine has real audio input hardware")
        for device in (None, "pulse"):
            with pytest.raises(KraitError) as info:
                data(client, "stream_levels", source="device", device=device, max_chunks=1)
            assert "source='file'" in info.value.message and "source='signal'" in info.value.message
        assert data(client, "stream_levels", max_chunks=1, **FAST)  # the other sources still work


def _portaudio_path() -> str:
    probe = "import sounddevice\nprint([l.split()[-1] for l in open('/proc/self/maps') if 'libportaudio' in l][0])"
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def _unshare_prefix() -> list[str]:
    return ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]


def test_without_portaudio_device_calls_fail_clearly_and_the_rest_works() -> None:
    """Hide libportaudio2 from the worker (a /dev/null bind mount in a private mount namespace): ``import
    sounddevice`` then raises OSError exactly as on a machine without the package."""
    if (
        shutil.which("unshare") is None
        or subprocess.run([*_unshare_prefix(), "true"], capture_output=True, timeout=10, check=False).returncode
    ):
        pytest.skip("needs unshare with mount namespaces to hide libportaudio from the worker")
    library = _portaudio_path()
    serve = [sys.executable, "-m", "python_worker", "serve", "--adapter", ADAPTER, "--port", "0"]
    process = subprocess.Popen(
        [*_unshare_prefix(), "sh", "-c", 'mount --bind /dev/null "$0" && exec "$@"', library, *serve],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    worker = None
    try:
        info = wait_ready(process)
        worker = Worker(process, info["port"], info)
        with Client(worker.target) as client:
            with pytest.raises(KraitError, match=r"PortAudio is not available.*install the libportaudio2"):
                client.execute("list_devices")
            with pytest.raises(KraitError, match="PortAudio is not available") as error:
                data(client, "stream_pitch", source="device", max_chunks=1)
            assert "source='file'" in error.value.message and "source='signal'" in error.value.message
            assert data(client, "stream_pitch", max_chunks=1, **FAST)[0]["note"] == "A4"
    finally:
        if worker is not None:
            worker.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(5)
