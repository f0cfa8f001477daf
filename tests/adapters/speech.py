"""Voices for the pitch tests: speech from espeak-ng with reference labels from Praat, and synthetic voices whose
fundamental is known exactly.

- ``espeak_speech``: espeak-ng (Debian package ``espeak-ng``, installed by scripts/setup) speaks a text to a WAV
  (22.05 kHz), resampled here to 48 kHz.
- ``praat_pitch``: reference labels made at test time by Praat's autocorrelation pitch tracker (Boersma 1993,
  through ``praat-parselmouth``, a test-only dependency in the ``dev`` extra), one label every 10 ms, 0 where
  Praat finds the frame unvoiced. With a 65 Hz floor its window is 3/65 s = 46 ms, the span of the adapter's
  default frame, so both look at the same audio.
- ``glottal_utterance``: a sentence-like synthetic voice: Rosenberg glottal pulses (open phase 40 %, closing phase
  16 % of the period) placed by integrating a gliding f0 contour, differentiated (lip radiation) and passed through
  four formant resonators of a vowel; vowels of 0.18-0.45 s with glides of up to ±6 semitones and a slow
  declination, separated by gaps of silence or faint noise. The true f0 of every sample is returned with it.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
from scipy import signal as sps
from scipy.io import wavfile

RATE = 48000
TEXT = (
    "The quick brown fox jumps over the lazy dog. How much wood would a woodchuck chuck, if a woodchuck could "
    "chuck wood? She sells sea shells by the sea shore."
)
# formant frequencies (Hz) of five vowels, and the resonators' bandwidths
VOWELS = {
    "a": (730, 1090, 2440, 3400),
    "e": (530, 1840, 2480, 3500),
    "i": (270, 2290, 3010, 3500),
    "o": (570, 840, 2410, 3300),
    "u": (300, 870, 2240, 3300),
}
BANDWIDTHS = (80, 90, 120, 150)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_speech(voice: str, directory: Path, text: str = TEXT) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (e.g. "en-us", "en-us+f3"), at 48 kHz, full scale ±1."""
    path = directory / f"espeak-{voice.replace('+', '_')}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60, capture_output=True)
    rate, samples = wavfile.read(path)
    x = samples.astype(np.float64) / 32768.0
    g = math.gcd(RATE, rate)
    return sps.resample_poly(x, RATE // g, rate // g)


def praat_pitch(x: np.ndarray, floor: float = 65.0, ceiling: float = 600.0) -> tuple[np.ndarray, np.ndarray]:
    """(frame times s, f0 Hz with 0 for unvoiced) by Praat's "To Pitch (ac)", every 10 ms."""
    import parselmouth

    pitch = parselmouth.Sound(x, sampling_frequency=RATE).to_pitch_ac(
        time_step=0.01, pitch_floor=floor, pitch_ceiling=ceiling
    )
    return np.asarray(pitch.xs()), np.nan_to_num(pitch.selected_array["frequency"])


def _rosenberg(period: float) -> np.ndarray:
    opening, closing = int(0.4 * period), int(0.16 * period)
    return np.concatenate(
        [0.5 * (1 - np.cos(np.pi * np.arange(opening) / opening)), np.cos(0.5 * np.pi * np.arange(closing) / closing)]
    )


def _vowel(f0: np.ndarray, vowel: str) -> np.ndarray:
    starts = np.nonzero(np.diff(np.floor(np.cumsum(f0) / RATE)) > 0)[0] + 1  # one pulse per period
    flow = np.zeros(len(f0) + RATE // 20)
    for start in starts:
        pulse = _rosenberg(RATE / f0[start])
        flow[start : start + len(pulse)] += pulse
    x = np.diff(flow[: len(f0)], prepend=0.0)
    for formant, bandwidth in zip(VOWELS[vowel], BANDWIDTHS, strict=True):
        r, theta = math.exp(-math.pi * bandwidth / RATE), 2 * math.pi * formant / RATE
        x = sps.lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], x)
    return x / np.max(np.abs(x))


def glottal_utterance(f0_start: float, seed: int, vowels: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(signal, true f0 per sample, 0 in the gaps) of a synthetic voice starting at ``f0_start`` Hz."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    f = f0_start
    for k in range(vowels):
        n = int(rng.uniform(0.18, 0.45) * RATE)
        end = f * 2 ** (rng.uniform(-6, 6) / 12) * 2 ** (-0.5 / 12)
        glide = 0.5 - 0.5 * np.cos(np.pi * np.linspace(0, 1, n))
        f0 = f * (end / f) ** glide
        parts.append(_vowel(f0, "aeiou"[k % 5]) * 10 ** (rng.uniform(-12, -3) / 20))
        truth.append(f0)
        f = end if 0.6 * f0_start < end < 1.8 * f0_start else f0_start
        gap = int(rng.uniform(0.06, 0.15) * RATE)
        parts.append(rng.standard_normal(gap) * 10 ** (-35 / 20) if k % 2 else np.zeros(gap))
        truth.append(np.zeros(gap))
    return np.concatenate(parts), np.concatenate(truth)


def write_wav(path: Path, x: np.ndarray) -> Path:
    wavfile.write(path, RATE, x.astype(np.float32))
    return path
