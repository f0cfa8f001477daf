"""The audio streams through a real worker over gRPC: generated signals, WAV files, bounds, rate limits,
cancellation that releases the file, and clear errors (bad options, no device, no PortAudio)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from scipy.io import wavfile

from adapters.audio.signal.octave import OctaveFilterBank
from python_worker.client import Client, KraitError
from tests.support import eventually
from tests.workers import ROOT, Worker, running_worker, wait_ready

from . import iec

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
    assert last["max_dbfs"] == [pytest.approx(-3.01, abs=0.05)]
    assert last["peak_dbfs"] == [pytest.approx(0.0, abs=0.01)]
    assert last["c_peak_dbfs"] == [pytest.approx(0.0, abs=0.01)]  # C(1 kHz) = 0 dB
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


@pytest.mark.parametrize("weighting", ["A", "C"])
def test_weighted_white_noise_reads_its_analytic_level(client: Client, weighting: str) -> None:
    """White noise at -20 dBFS RMS, 10 s: the weighted Leq is the noise power times the mean of the IEC 61672
    weighting (its power, 10^(W/10)) over 0 ... fs/2, within 0.1 dB (the bilinear filters read A 0.9 dB low)."""
    chunks = data(
        client, "stream_levels", signal=signal("noise", level_dbfs=-20.0), weighting=weighting, duration_s=10.0,
        max_rate_hz=0.1, **FAST,
    )  # fmt: skip
    assert [c["t_s"] for c in chunks] == [pytest.approx(1024 / 48000, abs=1e-6), 10.0]  # the first block, the rest
    f = np.linspace(1.0, 24000.0, 240_000)
    expected = -20.0 + 10 * math.log10(np.mean(10 ** (iec.weighting(weighting, f) / 10)))
    assert chunks[-1]["leq_dbfs"][0] == pytest.approx(expected, abs=0.1)


def _write(path: Path, samples: np.ndarray, rate: int = 48000) -> Path:
    wavfile.write(path, rate, samples.astype(np.float32))
    return path


def _tone(frequency: float, seconds: float, amplitude: float = 0.5, rate: int = 48000) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * rate)) / rate)


@pytest.mark.parametrize("max_rate_hz", [2.0, 20.0, 0.0])
def test_a_200_ms_burst_reads_its_fast_maximum_at_any_rate(client: Client, tmp_path: Path, max_rate_hz: float) -> None:
    """A steady 4 kHz tone, silence, then a 200 ms burst of it (IEC 61672-1 Table 4: LAFmax - LA = -1.0 dB): the
    maximum over the chunks reads -1.0 ± 0.05 dB whatever the rate (the level sampled at each chunk read it 1.55
    dB low at 20 chunks/s and 4.2 dB low at 2/s)."""
    x = np.concatenate([_tone(4000.0, 2.0), np.zeros(96000), _tone(4000.0, 0.2), np.zeros(48000)])
    wav = _write(tmp_path / "burst.wav", x)
    chunks = data(client, "stream_levels", source="file", path=str(wav), weighting="A", max_rate_hz=max_rate_hz, **FAST)
    steady = max(c["max_dbfs"][0] for c in chunks if 1.0 < c["t_s"] <= 2.0)
    burst = max(c["max_dbfs"][0] for c in chunks if c["t_s"] > 4.0)
    assert burst - steady == pytest.approx(iec.burst_response(0.2, 0.125), abs=0.05)
    sampled = max(c["rms_dbfs"][0] for c in chunks if c["t_s"] > 4.0)
    if max_rate_hz == 2.0:
        assert sampled < burst - 1  # what reading the level once per chunk shows


def test_file_stream_reports_its_last_partial_interval(client: Client, tmp_path: Path) -> None:
    """4.9 s of audio whose 1 kHz tone (-9.03 dBFS) sits in the last 0.9 s, one chunk per second: the last 0.87 s
    come in a final chunk at 4.9 s (they were never reported, and the tone read -23.99)."""
    wav = _write(tmp_path / "tail.wav", np.concatenate([np.zeros(4 * 48000), _tone(1000.0, 0.9)]))
    chunks = data(client, "stream_levels", source="file", path=str(wav), max_rate_hz=1.0, **FAST)
    times = [c["t_s"] for c in chunks]
    assert times[-1] == 4.9 and 4.0 < times[-2] < 4.1 and min(np.diff(times[:-1])) >= 1.0
    assert chunks[-1]["leq_dbfs"] == [pytest.approx(-9.03, abs=0.02)]
    assert chunks[-1]["max_dbfs"] == [pytest.approx(-9.03, abs=0.05)]
    spectrum = data(client, "stream_spectrum", source="file", path=str(wav), max_rate_hz=1.0, **FAST)
    assert spectrum[-1]["t_s"] == 4.9 and spectrum[-1]["peak_db"] == pytest.approx(-9.03, abs=0.05)


# -- spectrum ---------------------------------------------------------------------------------------------------
def test_spectrum_peak_and_reduction(client: Client) -> None:
    chunks = data(
        client, "stream_spectrum", signal=signal(frequency_hz=1234.5, level_dbfs=-6.0), points=64, max_chunks=3, **FAST
    )
    assert len(chunks) == 3
    chunk = chunks[-1]
    assert chunk["peak_frequency_hz"] == pytest.approx(1234.5, abs=0.5)
    assert chunk["peak_db"] == pytest.approx(-6.02 - 3.01, abs=0.02)
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
    assert float(chunk.metadata["peak_db"]) == pytest.approx(-3.01 + float(iec.a_weighting(100.0)), abs=0.02)
    assert float(np.max(magnitudes)) == pytest.approx(float(chunk.metadata["peak_db"]), abs=0.5)


def test_spectrum_averaging_and_peak_markers(client: Client, tmp_path: Path) -> None:
    """A 2 kHz tone for 1 s, then silence: with a 0.2 s response time the averaged level falls 10·lg(e)/τ =
    21.7 dB/s once the frames have left the tone; the peak markers fall 10 dB/s from the tone's level."""
    wav = _write(tmp_path / "stop.wav", np.concatenate([_tone(2000.0, 1.0), np.zeros(48000)]))
    chunks = data(
        client, "stream_spectrum", source="file", path=str(wav), response_time_s=0.2, peak_decay_db_s=10.0,
        points=None, max_rate_hz=0, **FAST,
    )  # fmt: skip
    k = int(np.argmin(np.abs(np.array(chunks[0]["frequencies_hz"]) - 2000.0)))  # the bin nearest the tone
    at_one = next(c for c in chunks if c["t_s"] >= 1.0)
    assert at_one["peak_db"] == pytest.approx(-9.03, abs=0.05)
    last = chunks[-1]  # at 2.0 s; frames (85 ms) end every 43 ms and leave the tone at about 1.04 s
    assert last["magnitudes_db"][k] == pytest.approx(-9.03 - 10 * math.log10(math.e) * (2.0 - 1.04) / 0.2, abs=1.5)
    assert last["peak_magnitudes_db"][k] == pytest.approx(-9.03 - 10.0 * 1.0, abs=0.6)
    assert (last["response_time_s"], last["peak_decay_db_s"]) == (0.2, 10.0)


def test_spectrogram_rows_cover_every_frame_once(client: Client) -> None:
    """A sweep, as npy chunks: rows come at the hop, each row's peak at the sweep's frequency at that row's
    time, and consecutive chunks continue where the previous one stopped."""
    sweep = signal("sweep", frequency_hz=200.0, end_frequency_hz=4000.0, sweep_s=4.0)
    chunks = list(
        client.execute_stream(
            "stream_spectrogram", signal=sweep, duration_s=2.0, fft_size=2048, hop_s=0.01, points=None, **FAST
        )
    )[:-1]
    rows_seen, next_time = 0, None
    for chunk in chunks:
        meta = chunk.metadata
        array = chunk.data
        assert chunk.content_type == "application/x-npy" and array.dtype == np.float32
        frequencies, rows = array[0], array[1:]
        assert len(rows) == int(meta["rows"]) and len(frequencies) == 1025 - 1  # bins from the first one >= 20 Hz
        first = float(meta["first_row_t_s"])
        if next_time is not None:
            assert first == pytest.approx(next_time, abs=1e-6)
        hop = float(meta["hop_s"])
        assert hop == 0.01
        for i, row in enumerate(rows):
            centre = first + i * hop - 1024 / 48000  # the middle of the row's frame
            expected = 200.0 * 20.0 ** (centre / 4.0)
            assert frequencies[int(np.argmax(row))] == pytest.approx(expected, abs=max(0.02 * expected, 24.0))
        rows_seen += len(rows)
        next_time = first + len(rows) * hop
    assert rows_seen == 1 + (96000 - 2048) // 480  # frames end at 2048 + j·480 samples, up to 2 s
    as_json = data(client, "stream_spectrogram", max_chunks=2, points=64, format="json", **FAST)
    assert len(as_json[0]["frequencies_hz"]) == 64 and len(as_json[0]["rows_db"][0]) == 64
    assert as_json[1]["first_row_t_s"] == pytest.approx(
        as_json[0]["first_row_t_s"] + as_json[0]["rows"] * as_json[0]["hop_s"]
    )


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


def test_octave_bands_of_noise(client: Client) -> None:
    chunk = data(
        client, "stream_octave", signal=signal("noise", level_dbfs=-20.0), bands_per_octave=1, fmin=31.5,
        fmax=16000.0, time_weighting="slow", duration_s=3.0, **FAST,
    )[-1]  # fmt: skip
    assert chunk["band_labels"] == ["31.5", "63", "125", "250", "500", "1k", "2k", "4k", "8k", "16k"]
    levels = np.array(chunk["band_levels_db"])
    # white noise: equal power per Hz, so each octave holds 3 dB more than the one below
    assert np.diff(levels[3:9]) == pytest.approx([3.01] * 5, abs=0.6)
    assert chunk["overall_db"] == pytest.approx(-20.0, abs=0.3)


@pytest.mark.parametrize(("frequency", "weighting"), [(50.0, "A"), (80.0, "A"), (1000.0, "A"), (8000.0, "C")])
def test_octave_weighting_comes_before_the_bank(client: Client, frequency: float, weighting: str) -> None:
    """A tone's band level is its level + the weighting at the tone (not at the band centre: 5 dB off for a
    50 Hz tone in the 63 Hz band) + the band's response there; overall_db is its weighted level exactly."""
    chunk = data(
        client, "stream_octave", signal=signal(frequency_hz=frequency, level_dbfs=-6.02), weighting=weighting,
        bands_per_octave=1, time_weighting="slow", duration_s=6.0, max_rate_hz=1.0, **FAST,
    )[-1]  # fmt: skip
    bank = OctaveFilterBank(1, 48000)
    band = int(np.argmax(bank.response_db(frequency)[:, 0]))
    weighted = -9.03 + float(iec.weighting(weighting, frequency))
    expected = weighted + float(bank.response_db(frequency)[band, 0])
    assert chunk["band_levels_db"][chunk["band_labels"].index(bank.labels[band])] == pytest.approx(expected, abs=0.05)
    assert chunk["overall_db"] == pytest.approx(weighted, abs=0.05)


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
        # the frame ends at t_s and spans 3/fmin = 46 ms, so compare with the sweep 23 ms earlier
        expected = 100.0 * 8.0 ** ((chunk["t_s"] - 1.5 / 65) / 2.0)
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
    assert min(np.diff(times)[:-1]) >= 0.1 - 1e-6  # never faster than max_rate_hz ...
    assert times[-1] == 2.0  # ... but for the last partial interval, reported at the bound
    assert 15 <= len(chunks) <= 21  # 2 s at <= 10/s, on 21.3 ms block boundaries
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
    with pytest.raises(KraitError, match=r"FileNotFoundError: argument 'path': .*missing\.wav: no such file"):
        data(client, "stream_levels", source="file", path=str(tmp_path / "missing.wav"))
    (tmp_path / "text.wav").write_text("s3cr3t, not audio")
    with pytest.raises(KraitError) as info:
        data(client, "stream_levels", source="file", path=str(tmp_path / "text.wav"))
    # scipy's own message quotes the file's first bytes ("File format b's3cr' not understood"): never sent
    assert (info.value.code, info.value.type) == (grpc.StatusCode.INVALID_ARGUMENT, "FileFormatError")
    assert info.value.message.endswith("text.wav: not a WAV file Krait can read (no RIFF/WAVE header)")
    assert "s3cr" not in info.value.message + info.value.traceback
    with pytest.raises(KraitError, match=r"NotAFileError: argument 'path': .*: not a regular file"):
        data(client, "stream_levels", source="file", path=str(tmp_path))
    with pytest.raises(KraitError, match=r"source='file' needs path="):
        data(client, "stream_levels", source="file")


def test_file_source_is_confined_to_the_data_root(tmp_path: Path) -> None:
    """With KRAIT_DATA_ROOT set, source='file' reads only under it; whatever lies outside (a root-only file, a
    missing one, one reached by ``..`` or through a link inside the root) gets one answer that quotes nothing."""
    root = tmp_path / "root"
    root.mkdir()
    _write_wav(root / "tones.wav", seconds=0.1)
    _write_wav(tmp_path / "outside.wav", seconds=0.1)
    (root / "link.wav").symlink_to(tmp_path / "outside.wav")
    (root / "shadow.wav").symlink_to("/etc/shadow")
    with running_worker(ADAPTER, env={"KRAIT_DATA_ROOT": str(root)}) as worker, Client(worker.target) as c:
        assert data(c, "stream_levels", source="file", path="tones.wav", max_rate_hz=0, **FAST)[-1]["t_s"] > 0
        answers = set()
        for path in [
            "/etc/shadow",
            "/etc/no-such-file",
            "../outside.wav",
            "../missing.wav",
            str(tmp_path / "outside.wav"),
            "link.wav",
            "shadow.wav",
        ]:
            with pytest.raises(KraitError) as info:
                data(c, "stream_levels", source="file", path=path, **FAST)
            error = info.value
            assert (error.code, error.type) == (grpc.StatusCode.INVALID_ARGUMENT, "PathNotAllowedError"), error
            assert not error.traceback and str(root) not in error.message and "b'" not in error.message
            answers.add(error.message.replace(repr(path), "<path>"))
        assert answers == {
            "PathNotAllowedError: argument 'path': <path> is outside the data root (KRAIT_DATA_ROOT): name a file"
            " under it, relative to the root"
        }
        assert c.execute("active_streams")["open"] == []  # nothing was left open by a refusal


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


@pytest.mark.parametrize(
    "tool", ["stream_levels", "stream_spectrum", "stream_spectrogram", "stream_octave", "stream_pitch", "stream_scope"]
)
def test_cancelling_any_stream_closes_its_source_promptly(client: Client, tool: str) -> None:
    stream = client.execute_stream(tool)  # a real-time signal with no bound: runs until cancelled
    next(stream)
    stream.close()
    ended = wait_closed(client, tool)
    assert ended["outcome"] == "cancelled" and ended["released"] is True
    assert ended["closed_at"] - ended["opened_at"] < 10  # it did not run to some other bound


def test_closing_a_stream_from_another_thread(client: Client) -> None:
    """A consumer thread iterates an endless stream; another thread closes it (a GUI's stop button): close()
    returns without "generator already executing", the consumer's loop just ends, and the source is released."""
    stream = client.execute_stream("stream_levels")  # a real-time signal with no bound
    seen: list[Any] = []
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            seen.extend(stream)
        except BaseException as exc:
            failures.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    deadline = time.monotonic() + PROMPT
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen, "no chunk arrived"
    stream.close()  # while the consumer waits inside next()
    consumer.join(PROMPT)
    assert not consumer.is_alive() and failures == []
    ended = wait_closed(client, "stream_levels")
    assert ended["outcome"] == "cancelled" and ended["released"] is True


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
        ("stream_pitch", {"frame_s": 0.01}, r"frame_s must be between 2/fmin = 0.0308 s"),
        ("stream_spectrum", {"response_time_s": 0.0}, r"response_time_s must be > 0"),
        ("stream_spectrum", {"peak_decay_db_s": -1.0}, r"peak_decay_db_s must be between 0 and 1000"),
        ("stream_spectrogram", {"hop_s": 60.0}, r"hop_s must be between one sample and 10.0 s"),
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
