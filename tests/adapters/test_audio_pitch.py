"""Pitch of voices through a real worker: espeak-ng speech against Praat's labels, and synthetic glottal-pulse
voices against their known fundamental (tests/adapters/speech.py makes both).

A gross error is a frame more than 50 cents from the reference, counted over the frames both call voiced; the
target is under 3 %. Voicing recall is the share of the reference's voiced frames the adapter calls voiced.
Each stream reads its WAV as fast as it can (``realtime: false``) with a chunk every 10 ms (``block_size: 480``,
one chunk per block); a chunk's frame ends at ``t_s`` and spans 3/fmin = 46 ms (the default), so its middle is
23 ms earlier. The measured numbers are in docs/adapters/audio.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from python_worker.client import Client
from tests.workers import running_worker

from .speech import RATE, espeak_speech, glottal_utterance, have_espeak, praat_pitch, write_wav

ADAPTER = "adapters.audio:AudioAdapter"
FRAME_S = math.ceil(3 * RATE / 65) / RATE  # the default frame for the default fmin of 65 Hz
GROSS_CENTS = 50.0

if not have_espeak():
    pytest.fail("the pitch tests need espeak-ng (Debian package espeak-ng; scripts/setup installs it)", pytrace=False)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with running_worker(ADAPTER) as worker, Client(worker.target, timeout=60) as c:
        yield c


def track(client: Client, wav: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frame middles s, f0 Hz with 0 for unvoiced) of the adapter's pitch stream over a WAV file."""
    chunks = [
        c.data
        for c in client.execute_stream(
            "stream_pitch", source="file", path=str(wav), block_size=480, max_rate_hz=0, realtime=False
        )
        if c.data is not None
    ]
    middles = np.array([c["t_s"] for c in chunks]) - FRAME_S / 2
    return middles, np.array([c["frequency_hz"] if c["voiced"] else 0.0 for c in chunks])


def score(reference: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    both = (reference > 0) & (measured > 0)
    cents = 1200 * np.abs(np.log2(measured[both] / reference[both]))
    return {
        "gross": float(np.mean(cents > GROSS_CENTS)),
        "recall": float(both.sum() / max(1, (reference > 0).sum())),
        "frames": int(both.sum()),
        "median_cents": float(np.median(cents)),
    }


@pytest.mark.parametrize("voice", ["en-us", "en-gb+m3", "en-us+f3", "en+f4"])
def test_espeak_speech_against_praat(client: Client, tmp_path: Path, voice: str) -> None:
    """Measured: gross errors 0 % (en-us, en-gb+m3), 0.8 % (en+f4), 2.4 % (en-us+f3: pitch glides faster than the
    two trackers' windows agree on); voicing recall 0.79-0.91; median error 2.5-6.3 cents."""
    x = espeak_speech(voice, tmp_path)
    times, reference = praat_pitch(x)
    middles, measured = track(client, write_wav(tmp_path / "speech.wav", x))
    nearest = np.clip(np.searchsorted(middles, times), 1, len(middles) - 1)
    nearest -= np.abs(middles[nearest - 1] - times) < np.abs(middles[nearest] - times)
    close = np.abs(middles[nearest] - times) <= 0.005  # a chunk every 10 ms: every Praat frame has one
    assert close.mean() > 0.95
    result = score(reference[close], measured[nearest[close]])
    assert result["frames"] > 250, result
    assert result["gross"] < 0.03, result
    assert result["recall"] >= 0.75, result


@pytest.mark.parametrize("f0_start", [90.0, 120.0, 200.0, 260.0])
def test_glottal_voice_against_its_known_fundamental(client: Client, tmp_path: Path, f0_start: float) -> None:
    """Measured: gross errors 0-0.5 %, recall of frames lying wholly inside a vowel 0.99-1.0, median error 2.4-5.0
    cents (pulses sit on whole samples), and no voiced frame lying wholly inside a gap."""
    x, truth = glottal_utterance(f0_start, seed=int(f0_start))
    middles, measured = track(client, write_wav(tmp_path / "voice.wav", x))
    half = round(FRAME_S * RATE / 2)
    centre = np.round(middles * RATE).astype(int)
    inside = np.array([truth[c - half : c + half].min() > 0 for c in centre])
    outside = np.array([truth[c - half : c + half].max() == 0 for c in centre])
    result = score(truth[centre], measured)
    assert result["gross"] < 0.03, result
    assert score(truth[centre][inside], measured[inside])["recall"] >= 0.97, result
    assert result["median_cents"] < 8, result
    assert not np.any(measured[outside] > 0)
