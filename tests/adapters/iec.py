"""Test references written from the standards, independent of the adapter's code.

IEC 61672-1:2013 (sound level meters):
- Annex E, equations (E.1)-(E.6): the A and C frequency weightings from the design frequencies fr = 1 kHz,
  fL = 10^1.5 Hz, fH = 10^3.9 Hz, fA = 10^2.45 Hz, D² = 1/2, normalised by C1000 = -0.062 dB, A1000 = -2.000 dB.
- Table 3: the A and C weightings at the nominal third-octave frequencies 10 Hz ... 20 kHz (to 0.1 dB) and the
  class 1 acceptance limits.
- Table 4: the reference 4 kHz tone-burst responses δref = 10·lg(1 - e^(-Tb/τ)) (time-weighted maximum minus the
  steady level) and their class 1 acceptance limits.
- Table 5: the reference C-weighted peak responses LCpeak - LC for one cycle (31.5 Hz, 8 kHz) and half cycles
  (500 Hz), with their class 1 acceptance limits.

IEC 61260-1:2014 (octave-band and fractional-octave-band filters):
- Table 1: class 1 acceptance limits on the relative attenuation of octave-band filters at the normalised
  frequencies Ω = G^0, G^±1/8, G^±1/4, G^±3/8, G^±1/2 (just inside and at the band edge), G^±1 ... G^±5.
- Equation (9) (Ω_b for 1/b-octave filters): Ω_b = 1 + ((G^(1/(2b)) - 1)/(G^(1/2) - 1))·(Ω_1 - 1) for Ω_1 >= 1,
  and Ω_b = 1/Ω_b(1/Ω_1) below the mid-band frequency.
- 5.12: the normalised effective bandwidth deviation ΔB = 10·lg(Be/Br), class 1 limits ±0.4 dB, with
  Be = ∫ 10^(-ΔA(Ω)/10) dΩ and Br = G^(1/(2b)) - G^(-1/(2b)).
"""

from __future__ import annotations

import math

import numpy as np

# -- IEC 61672-1:2013 Annex E ----------------------------------------------------------------------------------
_FR, _FL, _FH, _FA = 1000.0, 10**1.5, 10**3.9, 10**2.45
_D2 = 0.5
_B = (1 / (1 - math.sqrt(_D2))) * (_FR**2 + _FL**2 * _FH**2 / _FR**2 - math.sqrt(_D2) * (_FL**2 + _FH**2))
_C = _FL**2 * _FH**2
F1 = math.sqrt((-_B - math.sqrt(_B**2 - 4 * _C)) / 2)  # (E.3): 20.60 Hz
F4 = math.sqrt((-_B + math.sqrt(_B**2 - 4 * _C)) / 2)  # (E.4): 12194 Hz
F2 = (3 - math.sqrt(5)) / 2 * _FA  # (E.5): 107.7 Hz
F3 = (3 + math.sqrt(5)) / 2 * _FA  # (E.6): 737.9 Hz
C1000, A1000 = -0.062, -2.000


def c_weighting(f: np.ndarray | float) -> np.ndarray:
    """C(f) in dB, equation (E.1)."""
    f2 = np.asarray(f, dtype=np.float64) ** 2
    return 20 * np.log10(F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2))) - C1000


def a_weighting(f: np.ndarray | float) -> np.ndarray:
    """A(f) in dB, equation (E.2)."""
    f2 = np.asarray(f, dtype=np.float64) ** 2
    return (
        20 * np.log10(F4**2 * f2**2 / ((f2 + F1**2) * np.sqrt(f2 + F2**2) * np.sqrt(f2 + F3**2) * (f2 + F4**2))) - A1000
    )


def weighting(name: str, f: np.ndarray | float) -> np.ndarray:
    return a_weighting(f) if name == "A" else c_weighting(f)


# Table 3: nominal frequency -> (A dB, C dB, class 1 upper limit, class 1 lower limit); -inf: no lower limit
TABLE_3: dict[float, tuple[float, float, float, float]] = {
    10: (-70.4, -14.3, 3.0, -math.inf), 12.5: (-63.4, -11.2, 2.5, -math.inf), 16: (-56.7, -8.5, 2.0, -4.0),
    20: (-50.5, -6.2, 2.0, -2.0), 25: (-44.7, -4.4, 2.0, -1.5), 31.5: (-39.4, -3.0, 1.5, -1.5),
    40: (-34.6, -2.0, 1.0, -1.0), 50: (-30.2, -1.3, 1.0, -1.0), 63: (-26.2, -0.8, 1.0, -1.0),
    80: (-22.5, -0.5, 1.0, -1.0), 100: (-19.1, -0.3, 1.0, -1.0), 125: (-16.1, -0.2, 1.0, -1.0),
    160: (-13.4, -0.1, 1.0, -1.0), 200: (-10.9, 0.0, 1.0, -1.0), 250: (-8.6, 0.0, 1.0, -1.0),
    315: (-6.6, 0.0, 1.0, -1.0), 400: (-4.8, 0.0, 1.0, -1.0), 500: (-3.2, 0.0, 1.0, -1.0),
    630: (-1.9, 0.0, 1.0, -1.0), 800: (-0.8, 0.0, 1.0, -1.0), 1000: (0.0, 0.0, 0.7, -0.7),
    1250: (0.6, 0.0, 1.0, -1.0), 1600: (1.0, -0.1, 1.0, -1.0), 2000: (1.2, -0.2, 1.0, -1.0),
    2500: (1.3, -0.3, 1.0, -1.0), 3150: (1.2, -0.5, 1.0, -1.0), 4000: (1.0, -0.8, 1.0, -1.0),
    5000: (0.5, -1.3, 1.5, -1.5), 6300: (-0.1, -2.0, 1.5, -2.0), 8000: (-1.1, -3.0, 1.5, -2.5),
    10000: (-2.5, -4.4, 2.0, -3.0), 12500: (-4.3, -6.2, 2.0, -5.0), 16000: (-6.6, -8.5, 2.5, -16.0),
    20000: (-9.3, -11.2, 3.0, -math.inf),
}  # fmt: skip


def exact_frequency(nominal: float) -> float:
    """The base-10 third-octave frequency behind a nominal one (Table 3 is computed at these): 10^(n/10)."""
    return 10 ** (round(10 * math.log10(nominal)) / 10)


# Table 4: burst duration (ms) -> (δref Fast, δref Slow or None, class 1 upper, class 1 lower)
TABLE_4: dict[float, tuple[float, float | None, float, float]] = {
    1000: (0.0, -2.0, 0.5, -0.5), 500: (-0.1, -4.1, 0.5, -0.5), 200: (-1.0, -7.4, 0.5, -0.5),
    100: (-2.6, -10.2, 1.0, -1.0), 50: (-4.8, -13.1, 1.0, -1.0), 20: (-8.3, -17.0, 1.0, -1.0),
    10: (-11.1, -20.0, 1.0, -1.0), 5: (-14.1, -23.0, 1.0, -1.0), 2: (-18.0, -27.0, 1.0, -1.5),
    1: (-21.0, None, 1.0, -2.0), 0.5: (-24.0, None, 1.0, -2.5), 0.25: (-27.0, None, 1.0, -3.0),
}  # fmt: skip


def burst_response(duration_s: float, tau_s: float) -> float:
    """δref = 10·lg(1 - e^(-Tb/τ)), the exact value behind Table 4."""
    return 10 * math.log10(1 - math.exp(-duration_s / tau_s))


# Table 5: signal -> (LCpeak - LC in dB, class 1 limit +-)
TABLE_5: dict[str, tuple[float, float]] = {
    "one cycle 31.5 Hz": (2.5, 2.0),
    "one cycle 8 kHz": (3.4, 2.0),
    "positive half-cycle 500 Hz": (2.4, 1.0),
    "negative half-cycle 500 Hz": (2.4, 1.0),
}

# -- IEC 61260-1:2014 ----------------------------------------------------------------------------------------------
G = 10 ** (3 / 10)
# Table 1, class 1: exponent x of Ω = G^x (x >= 0, mirrored below fm) -> (min, max) relative attenuation, dB
TABLE_1_PASS: list[tuple[float, float, float]] = [
    (0.0, -0.4, 0.4),
    (1 / 8, -0.4, 0.5),
    (1 / 4, -0.4, 0.7),
    (3 / 8, -0.4, 1.4),
    (1 / 2, -0.4, 5.3),  # just inside the band edge
]
TABLE_1_STOP: list[tuple[float, float]] = [(1 / 2, 1.2), (1, 16.6), (2, 40.5), (3, 60.0), (4, 70.0), (5, 70.0)]
BANDWIDTH_LIMIT_DB = 0.4  # 5.12, class 1


def omega_b(omega_1: float, b: int) -> float:
    """Equation (9): the 1/b-octave normalised frequency of the octave breakpoint Ω_1 (>= 1)."""
    return 1 + (G ** (1 / (2 * b)) - 1) / (G**0.5 - 1) * (omega_1 - 1)


def class_1_mask(b: int) -> list[tuple[float, float, float]]:
    """(Ω, minimum, maximum relative attenuation in dB) at every breakpoint of a 1/b-octave filter, both sides."""
    out: list[tuple[float, float, float]] = [(1.0, -0.4, 0.4)]
    for x, low, high in TABLE_1_PASS[1:]:
        omega = omega_b(G**x, b) * (1 - 1e-9 if x == 0.5 else 1)  # "just inside" the edge
        out += [(omega, low, high), (1 / omega, low, high)]
    for x, low in TABLE_1_STOP:
        omega = omega_b(G**x, b)
        high = 5.3 if x == 0.5 else math.inf
        out += [(omega, low, high), (1 / omega, low, high)]
    return out


def reference_bandwidth(b: int) -> float:
    """Br = G^(1/(2b)) - G^(-1/(2b)), the normalised width of an ideal 1/b-octave band."""
    return G ** (1 / (2 * b)) - G ** (-1 / (2 * b))
