"""Speech through a real device: espeak-ng speech played into a private PulseAudio null sink with ``paplay`` and
recorded by a worker from the sink's monitor (PortAudio -> ALSA ``pulse`` -> PulseAudio), its pitch compared
with Praat's labels of the same WAV (tests/adapters/speech.py). The recording starts before the playback, so the
two are aligned first: by the lag, in 10 ms steps, at which most voiced frames agree within 50 cents."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from python_worker.client import Client
from tests.workers import running_worker

from .pulse import PulseServer, missing_tools, pulse_server
from .speech import RATE, espeak_speech, have_espeak, praat_pitch, write_wav

ADAPTER = "adapters.audio:AudioAdapter"
FRAME_S = math.ceil(3 * RATE / 65) / RATE

if missing_tools() or not have_espeak():
    pytest.fail(
        "speech over PulseAudio needs pulseaudio, pulseaudio-utils and espeak-ng (scripts/setup installs them)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    with pulse_server(tmp_path_factory.mktemp("pulse")) as server:
        yield server


@pytest.fixture(scope="module")
def client(pulse: PulseServer) -> Iterator[Client]:
    with running_worker(ADAPTER, env=pulse.env) as worker, Client(worker.target, timeout=60) as c:
        yield c


def _agreement(reference: np.ndarray, measured: np.ndarray) -> tuple[int, float, int]:
    """(frames voiced in both, share of them more than 50 cents apart, reference frames voiced)."""
    both = (reference > 0) & (measured > 0)
    cents = 1200 * np.abs(np.log2(measured[both] / reference[both]))
    return int(both.sum()), float(np.mean(cents > 50)) if both.any() else 1.0, int((reference > 0).sum())


def test_pitch_of_speech_played_through_pulseaudio(client: Client, pulse: PulseServer, tmp_path: Path) -> None:
    speech = espeak_speech("en-us", tmp_path, "The quick brown fox jumps over the lazy dog. How much wood?")
    wav = write_wav(tmp_path / "speech.wav", speech)
    _, reference = praat_pitch(speech)  # 10 ms steps
    seconds = len(speech) / RATE + 1.5
    args = {"source": "device", "device": "pulse", "sample_rate": 48000, "block_size": 480, "max_rate_hz": 0}
    measured: list[float] = []
    with client.stream("stream_pitch", {**args, "duration_s": seconds}, timeout=seconds + 20) as stream:
        chunks = iter(stream)
        measured.append(0.0 if not (first := next(chunks).data)["voiced"] else first["frequency_hz"])
        with pulse.playing(wav) as player:
            for chunk in chunks:
                if chunk.data is not None:
                    measured.append(chunk.data["frequency_hz"] if chunk.data["voiced"] else 0.0)
            deadline = time.monotonic() + 5
            while player.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert player.returncode == 0, player.stderr.read().decode() if player.stderr else ""
    track = np.array(measured)
    results = {
        lag: _agreement(reference, track[lag : lag + len(reference)]) for lag in range(len(track) - len(reference))
    }
    lag = max(results, key=lambda k: results[k][0] * (1 - results[k][1]))  # most frames agreeing
    frames, gross, voiced = best = results[lag]
    assert 0 < lag * 0.01 < 1.5  # the playback started within the recording's first 1.5 s
    assert gross < 0.03, best
    assert frames / voiced >= 0.7, best  # measured: no gross error, recall 0.86 (203 of 237 frames)
