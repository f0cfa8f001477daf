"""Musical notes of frequencies, equal temperament with A4 = 440 Hz:

m = 69 + 12·log2(f / 440)        (MIDI note number, fractional)
n = round(m), cents = 100·(m - n) ∈ [-50, 50]
name = NAMES[n mod 12] + octave, octave = ⌊n / 12⌋ - 1  (so MIDI 60 is C4 and 69 is A4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

A4_HZ = 440.0
NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True, slots=True)
class Note:
    name: str  # "A4"
    midi: float  # fractional MIDI number of the frequency
    cents: float  # offset from the named note, -50 … 50


def note_of(frequency_hz: float, a4_hz: float = A4_HZ) -> Note:
    """The nearest equal-tempered note to ``frequency_hz`` and the offset from it in cents."""
    if not frequency_hz > 0:
        raise ValueError(f"frequency must be > 0 Hz, got {frequency_hz}")
    midi = 69.0 + 12.0 * math.log2(frequency_hz / a4_hz)
    n = round(midi)
    return Note(f"{NAMES[n % 12]}{n // 12 - 1}", midi, 100.0 * (midi - n))


def frequency_of(midi: float, a4_hz: float = A4_HZ) -> float:
    """f = 440·2^((m - 69)/12)."""
    return a4_hz * 2.0 ** ((midi - 69.0) / 12.0)
