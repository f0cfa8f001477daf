"""Real audio through a real device: a private PulseAudio server with a null sink, a 440 Hz tone played into it
with ``paplay``, and a worker recording the sink's monitor through sounddevice (PortAudio -> ALSA ``pulse`` ->
PulseAudio). The tone has peak amplitude 0.5: -6.02 dBFS peak, -9.03 dBFS RMS at the sink's 100 % volume."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from adapters.audio.signal.octave import OctaveFilterBank
from python_worker.client import Client, KraitError
from tests.support import eventually
from tests.workers import running_worker

from .pulse import PulseServer, missing_tools, pulse_server, write_tone

ADAPTER = "adapters.audio:AudioAdapter"
TONE_HZ, AMPLITUDE = 440.0, 0.5
TONE_RMS_DBFS = 20 * math.log10(AMPLITUDE / math.sqrt(2))  # -9.03
DEVICE = "pulse"  # ALSA's PulseAudio plugin: reaches the server through XDG_RUNTIME_DIR / PULSE_SERVER
STREAM_TIMEOUT_S = 20.0

if missing_tools():
    pytest.fail(
        f"real-audio tests need {', '.join(missing_tools())} (Debian packages pulseaudio, pulseaudio-utils)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    with pulse_server(tmp_path_factory.mktemp("pulse")) as server:
        yield server


@pytest.fixture(scope="module")
def client(pulse: PulseServer) -> Iterator[Client]:
    # started after the server: PortAudio lists devices when the worker first imports sounddevice
    with running_worker(ADAPTER, env=pulse.env) as worker, Client(worker.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def tone(pulse: PulseServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tone plays into the null sink for the whole module (60 s is far longer than the tests)."""
    wav = write_tone(tmp_path_factory.mktemp("tone") / "a440.wav", TONE_HZ, AMPLITUDE, 60.0)
    with pulse.playing(wav) as player:

        def playing() -> str:
            assert player.poll() is None, f"paplay exited: {player.stderr.read().decode() if player.stderr else ''}"
            return pulse.pactl("list", "short", "sink-inputs").strip()  # its stream reached the server

        eventually(playing, what="paplay's stream in the server")
        yield


def _loudest_dbfs(chunk: dict[str, Any]) -> float:
    """The level that shows the tone in any stream's chunk."""
    for key in ("level_dbfs", "peak_db"):
        if key in chunk:
            return chunk[key]
    if "rows_db" in chunk:
        return max(max(row) for row in chunk["rows_db"])
    return max(chunk.get("rms_dbfs") or chunk["band_levels_db"])


def device_chunks(client: Client, tool: str, settle_s: float, count: int, **args: Any) -> list[dict[str, Any]]:
    """``count`` chunks recorded from the device after the first ``settle_s`` seconds with the tone audible."""
    args = {"source": "device", "device": DEVICE, "sample_rate": 48000, "max_rate_hz": 10.0, **args}
    kept: list[dict[str, Any]] = []
    heard_at = None
    with client.stream(tool, args, timeout=STREAM_TIMEOUT_S) as stream:
        for chunk in stream:
            data = chunk.data
            if heard_at is None and _loudest_dbfs(data) > -30:
                heard_at = data["t_s"]
            if heard_at is not None and data["t_s"] - heard_at >= settle_s:
                kept.append(data)
                if len(kept) == count:
                    return kept
    raise AssertionError(f"{tool}: the stream ended before {count} chunks with the tone")


def test_list_devices_sees_the_pulse_device(client: Client) -> None:
    names = [d["name"] for d in client.execute("list_devices")]
    assert DEVICE in names


def test_pitch_of_the_played_tone(client: Client, tone: None) -> None:
    chunks = device_chunks(client, "stream_pitch", settle_s=0.2, count=8)
    for chunk in chunks:
        assert chunk["voiced"] and chunk["note"] == "A4"
        assert chunk["frequency_hz"] == pytest.approx(TONE_HZ, abs=2.0)
        assert chunk["confidence"] > 0.9
    assert np.median([c["frequency_hz"] for c in chunks]) == pytest.approx(TONE_HZ, abs=0.5)


def test_level_of_the_played_tone(client: Client, tone: None) -> None:
    # Fast weighting settles within 0.1 dB in 0.6 s (5 time constants)
    chunks = device_chunks(client, "stream_levels", settle_s=0.7, count=5)
    for chunk in chunks:
        assert chunk["rms_dbfs"][0] == pytest.approx(TONE_RMS_DBFS, abs=1.5)
        assert chunk["leq_dbfs"][0] == pytest.approx(TONE_RMS_DBFS, abs=1.5)
        assert chunk["peak_dbfs"][0] == pytest.approx(TONE_RMS_DBFS + 3.01, abs=1.5)
        # a steady tone: the interval's Fast maximum is its level, the C-weighted peak its peak (C(440) = 0 dB)
        assert chunk["max_dbfs"][0] == pytest.approx(chunk["rms_dbfs"][0], abs=0.1)
        assert chunk["c_peak_dbfs"][0] == pytest.approx(chunk["peak_dbfs"][0], abs=0.1)
        assert chunk["overflows"] == 0


def test_octave_band_of_the_played_tone(client: Client, tone: None) -> None:
    chunks = device_chunks(client, "stream_octave", settle_s=0.7, count=3, bands_per_octave=3)
    # 440 Hz lies in the "400" band (354.8 - 446.7 Hz), near its upper edge, where the band filter's response is
    # about -1.5 dB: the expected band level is the tone's level plus that response
    bank = OctaveFilterBank(3, 48000)
    expected = TONE_RMS_DBFS + float(bank.response_db(TONE_HZ)[bank.labels.index("400"), 0])
    for chunk in chunks:
        labels, levels = chunk["band_labels"], chunk["band_levels_db"]
        assert labels[int(np.argmax(levels))] == "400"
        assert levels[labels.index("400")] == pytest.approx(expected, abs=1.5)
        assert levels[labels.index("500")] < levels[labels.index("400")] - 2  # the next band sees it 3.4 dB down


def test_spectrum_peak_of_the_played_tone(client: Client, tone: None) -> None:
    chunks = device_chunks(client, "stream_spectrum", settle_s=0.2, count=3)
    for chunk in chunks:
        assert chunk["peak_frequency_hz"] == pytest.approx(TONE_HZ, abs=2.0)
        assert chunk["peak_db"] == pytest.approx(TONE_RMS_DBFS, abs=1.5)


def test_spectrogram_of_the_played_tone(client: Client, tone: None) -> None:
    chunks = device_chunks(client, "stream_spectrogram", settle_s=0.2, count=3, format="json", points=None)
    for chunk in chunks:
        assert chunk["hop_s"] == pytest.approx(1024 / 48000, abs=1e-6)
        for row in chunk["rows_db"]:
            assert chunk["frequencies_hz"][int(np.argmax(row))] == pytest.approx(TONE_HZ, abs=chunk["bin_hz"])


def test_cancelling_a_device_stream_closes_the_device(client: Client, tone: None) -> None:
    # streams of earlier tests close asynchronously (a cancelled generator closes at its next block)
    eventually(lambda: not client.execute("active_streams")["open"], interval=0.02, what="earlier streams closing")
    stream = client.stream("stream_scope", {"source": "device", "device": DEVICE}, timeout=STREAM_TIMEOUT_S)
    first = next(stream).data
    assert len(first["samples"]) == 1
    opened = client.execute("active_streams")["open"]
    assert [(e["source"], e["device"]) for e in opened] == [("device", DEVICE)]
    stream.close()

    def device_closed() -> dict[str, Any]:
        streams = client.execute("active_streams")
        assert not streams["open"], f"the device is still open: {streams}"
        return streams

    streams = eventually(device_closed, timeout=2.0, interval=0.02)  # promptly
    ended = streams["closed"][-1]
    # released: PortAudio's own `closed` flag of the InputStream, read after close()
    assert (ended["tool"], ended["outcome"], ended["released"]) == ("stream_scope", "cancelled", True)


def test_unknown_device_lists_the_real_ones(client: Client) -> None:
    with pytest.raises(KraitError) as info:
        next(iter(client.execute_stream("stream_levels", source="device", device="no-such-mic")))
    message = info.value.message
    assert "no-such-mic" in message and DEVICE in message and "source='signal'" in message
