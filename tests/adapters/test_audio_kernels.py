"""The audio adapter's numeric kernels against the standards (tests/adapters/iec.py) and closed-form results.

The numbers docs/adapters/audio.md quotes come from these tests; each test says which.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import signal as sps

from adapters.audio.analysers import LevelsAnalyser, PitchAnalyser, SpectrumAnalyser
from adapters.audio.signal.generators import SignalGenerator
from adapters.audio.signal.levels import DB_FLOOR, ExponentialAverager, PeakHold, power_to_db, rms_db
from adapters.audio.signal.notes import note_of
from adapters.audio.signal.octave import OctaveFilterBank, band_edges, band_indices, centre_frequency, nominal_label
from adapters.audio.signal.spectrum import (
    Framer,
    amplitude_spectrum_db,
    bin_frequencies,
    find_peak,
    make_window,
    reduce_log,
    window_kernel,
)
from adapters.audio.signal.weighting import WeightingFilter, weighting_db, weighting_sos
from adapters.audio.signal.yin import yin
from adapters.audio.sources import DeviceSource

from . import iec

FS = 48000
RATES = (44100, 48000)


def _sine(frequency: float, seconds: float = 1.0, amplitude: float = 1.0, fs: int = FS) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * fs)) / fs)


def _levels(weighting: str = "Z", time_weighting: str = "fast", fs: int = FS) -> LevelsAnalyser:
    return LevelsAnalyser(fs, 1, time_weighting=time_weighting, weighting=weighting, peak_hold_s=1.0)


def _measure(analyser: LevelsAnalyser, x: np.ndarray) -> dict:
    analyser.feed(x[:, None])
    return analyser.snapshot({"t_s": len(x) / FS})


# -- weighting: IEC 61672-1:2013 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("nominal", sorted(iec.TABLE_3))
def test_analytic_weightings_are_the_iec_61672_formulas_and_table_3(nominal: float) -> None:
    a_db, c_db, _, _ = iec.TABLE_3[nominal]
    f = iec.exact_frequency(nominal)
    for name, table in (("A", a_db), ("C", c_db)):
        assert float(weighting_db(name, f)) == pytest.approx(float(iec.weighting(name, f)), abs=1e-3)
        assert float(weighting_db(name, f)) == pytest.approx(table, abs=0.05 + 1e-9)  # the table rounds to 0.1
    assert float(weighting_db("Z", f)) == 0.0


def test_weightings_are_exactly_0_db_at_1_khz_and_floor_at_dc() -> None:
    assert float(weighting_db("A", 1000.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(weighting_db("C", 1000.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(weighting_db("A", 0.0)) == DB_FLOOR
    assert weighting_sos("Z", FS) is None
    with pytest.raises(ValueError, match="weighting must be one of A, C, Z"):
        weighting_db("B", 100.0)


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("name", ["A", "C"])
def test_digital_weighting_within_0_1_db_of_iec_61672_up_to_16_khz(fs: int, name: str) -> None:
    """The issue's target: 0.1 dB of the formulas up to 16 kHz (measured: <= 0.01 dB), and class 1 of Table 3 at
    every nominal frequency below Nyquist (20 kHz included at 48 kHz)."""
    grid = np.concatenate([np.geomspace(10.0, 16000.0, 400), [iec.exact_frequency(n) for n in iec.TABLE_3]])
    grid = grid[grid <= 16000.0 * 1.0001]
    _, h = sps.sosfreqz(weighting_sos(name, fs), worN=grid, fs=fs)
    error = 20 * np.log10(np.abs(h)) - iec.weighting(name, grid)
    assert np.max(np.abs(error)) <= 0.01  # docs: "within 0.01 dB"
    for nominal, (a_db, c_db, upper, lower) in iec.TABLE_3.items():
        f = iec.exact_frequency(nominal)
        if f >= fs / 2:
            continue
        _, h = sps.sosfreqz(weighting_sos(name, fs), worN=[f], fs=fs)
        deviation = 20 * math.log10(abs(h[0])) - (a_db if name == "A" else c_db)
        assert lower <= deviation <= upper, (nominal, deviation)


def test_weighting_filter_keeps_state_across_blocks() -> None:
    x = np.random.default_rng(3).standard_normal((FS, 2))
    whole = WeightingFilter("A", FS, 2).process(x)
    pieces = WeightingFilter("A", FS, 2)
    parts = np.concatenate([pieces.process(x[a:b]) for a, b in ((0, 1), (1, 1000), (1000, 1000), (1000, FS))])
    assert np.allclose(whole, parts)


# -- levels ---------------------------------------------------------------------------------------------------------
def test_full_scale_sine_is_minus_3_01_dbfs_rms() -> None:
    assert float(rms_db(_sine(1000.0))) == pytest.approx(-3.0103, abs=0.001)
    assert float(rms_db(_sine(1000.0, amplitude=0.5))) == pytest.approx(-9.0309, abs=0.001)
    assert float(power_to_db(0.0)) == DB_FLOOR


@pytest.mark.parametrize(("name", "tau"), [("fast", 0.125), ("slow", 1.0)])
def test_time_weighting_step_response_and_decay_rate(name: str, tau: float) -> None:
    averager = ExponentialAverager(tau, FS, 1)
    on = averager.process(np.ones((round(5 * tau * FS), 1)))[:, 0]
    # at t = tau after a step the level is 10·log10(1 - 1/e) = -1.99 dB below the final level
    assert float(power_to_db(on[round(tau * FS) - 1])) == pytest.approx(10 * math.log10(1 - math.exp(-1)), abs=0.01)
    off = averager.process(np.zeros((FS // 2, 1)))[:, 0]
    # after the signal stops the level falls linearly in dB: 10·log10(e)/tau dB per second (34.74 Fast, 4.34 Slow)
    decay_per_s = float(power_to_db(off[FS // 4 - 1]) - power_to_db(off[FS // 2 - 1])) / 0.25
    assert decay_per_s == pytest.approx(10 * math.log10(math.e) / tau, rel=1e-3)


def _burst(duration_s: float, amplitude: float = 0.5) -> np.ndarray:
    """A 4 kHz tone burst starting and ending at zero crossings, after 0.1 s and before 1.5 s of silence."""
    cycles = round(duration_s * 4000)
    tone = amplitude * np.sin(2 * np.pi * np.arange(round(cycles * FS / 4000)) * 4000 / FS)
    return np.concatenate([np.zeros(FS // 10), tone, np.zeros(3 * FS // 2)])


@pytest.mark.parametrize("time_weighting", ["fast", "slow"])
def test_tone_burst_maxima_meet_iec_61672_table_4(time_weighting: str) -> None:
    """LAFmax/LASmax of 4 kHz bursts minus the steady level: within class 1 of Table 4, and within 0.05 dB of
    δref = 10·lg(1 - e^(-Tb/τ)) for bursts of 2 ms and longer (0.15 dB below), however the bursts fall across
    blocks and chunks."""
    tau = 0.125 if time_weighting == "fast" else 1.0
    steady = _measure(_levels("A", time_weighting), 0.5 * np.sin(2 * np.pi * 4000 * np.arange(4 * FS) / FS))
    reference = steady["leq_dbfs"][0]
    for duration_ms, (fast, slow, upper, lower) in iec.TABLE_4.items():
        table = fast if time_weighting == "fast" else slow
        if table is None:
            continue
        exact = iec.burst_response(duration_ms / 1000, tau)
        assert exact == pytest.approx(table, abs=0.05 + 1e-9)  # the table is the formula, rounded
        analyser = _levels("A", time_weighting)
        x = _burst(duration_ms / 1000)
        maxima = []
        for start in range(0, len(x), 700):  # blocks of 700 frames, a chunk every 3 blocks (44 ms)
            analyser.feed(x[start : start + 700, None])
            if start // 700 % 3 == 2:
                maxima.append(analyser.snapshot({"t_s": 0.0})["max_dbfs"][0])
        maxima.append(analyser.snapshot({"t_s": 0.0})["max_dbfs"][0])
        deviation = max(maxima) - reference
        assert lower <= deviation - table <= upper, (duration_ms, deviation)
        # shorter bursts spread beyond the A filter's flat top: -0.14 dB at 0.25 ms (one cycle), -0.04 at 2 ms
        assert deviation == pytest.approx(exact, abs=0.05 if duration_ms >= 2 else 0.15), duration_ms


@pytest.mark.parametrize("signal", sorted(iec.TABLE_5))
def test_c_weighted_peak_meets_iec_61672_table_5(signal: str) -> None:
    expected, limit = iec.TABLE_5[signal]
    frequency = 8000.0 if "8 kHz" in signal else 500.0 if "500" in signal else 31.5
    steady = _measure(_levels("C", "slow"), _sine(frequency, 4.0))["leq_dbfs"][0]  # LC of the steady sine
    cycles = 1.0 if "one cycle" in signal else 0.5
    n = round(cycles * FS / frequency)
    piece = np.sin(2 * np.pi * frequency * np.arange(n) / FS) * (-1 if "negative" in signal else 1)
    chunk = _measure(_levels("Z"), np.concatenate([np.zeros(FS // 10), piece, np.zeros(FS // 2)]))
    assert chunk["c_peak_dbfs"][0] - steady == pytest.approx(expected, abs=limit)


def test_peak_hold_keeps_a_quieter_click_still_inside_the_window() -> None:
    hold = PeakHold(1.0, 1)
    hold.add(np.array([1.0]), np.array([0.0]))  # 0 dBFS at t = 0
    hold.add(np.array([0.5]), np.array([0.5]))  # -6 dBFS at t = 0.5
    assert hold.held(0.9)[0] == 1.0
    assert hold.held(1.2)[0] == 0.5  # the loud one expired; the -6 dBFS click is still inside the second
    assert hold.held(1.6)[0] == 0.0
    hold.add(np.array([0.2]), np.array([1.7]))
    hold.add(np.array([0.3]), np.array([1.8]))  # a higher, later peak replaces the lower one at once
    assert hold.held(1.8)[0] == 0.3


def test_levels_chunk_holds_a_click_between_chunks() -> None:
    analyser = _levels()
    x = np.zeros(2 * FS)
    x[FS // 10] = 1.0  # a 0 dBFS click at 0.1 s
    x[FS // 2] = 0.5  # a -6 dBFS click at 0.5 s
    _measure(analyser, x[: FS // 5])
    _measure(analyser, x[FS // 5 : FS])  # chunk at 1.0 s
    chunk = _measure(analyser, x[FS : FS + FS // 5])  # chunk at 1.2 s: the 0 dBFS click is 1.1 s old
    assert chunk["peak_hold_dbfs"] == [pytest.approx(-6.02, abs=0.01)]
    assert chunk["peak_dbfs"] == [DB_FLOOR]


# -- spectrum -------------------------------------------------------------------------------------------------------
WINDOWS = ["hann", "hamming", "blackman", "blackmanharris", "flattop", "rectangular"]
# level error of the kernel interpolation for off-bin tones (docs/adapters/audio.md quotes these)
LEVEL_ERROR_DB = {"hann": 0.01, "hamming": 0.04, "blackman": 0.01, "blackmanharris": 0.01, "flattop": 0.01}


@pytest.mark.parametrize("window", WINDOWS)
def test_bin_centred_sine_reads_its_rms_level_whatever_the_window(window: str) -> None:
    n = 4096
    f = 100 * FS / n  # exactly on bin 100
    levels = amplitude_spectrum_db(_sine(f, amplitude=0.5)[:n], make_window(window, n))
    assert int(np.argmax(levels)) == 100
    assert float(levels[100]) == pytest.approx(-9.03, abs=0.01)


@pytest.mark.parametrize("window", WINDOWS)
def test_kernel_interpolation_does_not_bias_level_or_frequency(window: str) -> None:
    """Off-bin tones from 50 Hz to 15 kHz (and every tenth of a bin around 1 kHz): the peak's level and
    frequency, plain and A-weighted (low tones, where A is steep)."""
    n = 4096
    frequencies = bin_frequencies(n, FS)
    kernel, w = window_kernel(window, n), make_window(window, n)
    a_weights = weighting_db("A", frequencies)
    limit = LEVEL_ERROR_DB.get(window, 0.1)  # rectangular: its -13 dB sidelobes let the mirror image leak in
    tones = [*np.linspace(50.0, 15000.0, 37), *(1000.0 + FS / n * d for d in np.linspace(0.0, 1.0, 11))]
    for f in tones:
        levels = amplitude_spectrum_db(_sine(f, amplitude=0.5)[:n], w)
        peak_hz, peak_db = find_peak(frequencies, levels, 20.0, 20000.0, kernel)
        assert peak_db == pytest.approx(-9.031, abs=limit), f
        assert peak_hz == pytest.approx(f, abs=0.02 * FS / n), f
    for f in (40.0, 50.0, 63.0, 80.0, 100.0, 125.0):
        levels = amplitude_spectrum_db(_sine(f, amplitude=0.5)[:n], w)
        peak_hz, peak_db = find_peak(frequencies, levels, 20.0, 20000.0, kernel, a_weights)
        weighted = peak_db + float(weighting_db("A", peak_hz))
        assert weighted == pytest.approx(-9.031 + float(iec.a_weighting(f)), abs=limit), f


def test_log_reduction_keeps_the_peak_and_averages_power() -> None:
    frequencies = np.linspace(0, 24000, 2049)
    levels = np.full(2049, -100.0)
    levels[100] = -10.0  # 1171.9 Hz
    centres, maxed = reduce_log(frequencies, levels, 32, 20.0, 24000.0, "max")
    assert len(centres) == 32 and np.all(np.diff(centres) > 0)
    band = int(np.argmax(maxed))
    assert maxed[band] == -10.0
    edges = np.geomspace(20.0, 24000.0, 33)
    assert edges[band] <= frequencies[100] < edges[band + 1]
    _, mean = reduce_log(frequencies, levels, 32, 20.0, 24000.0, "mean")
    in_band = (frequencies >= edges[band]) & (frequencies < edges[band + 1])
    expected = 10 * math.log10((10 ** (-1.0) + (in_band.sum() - 1) * 1e-10) / in_band.sum())
    assert mean[band] == pytest.approx(expected, abs=1e-6)


def test_framer_cuts_frames_at_the_hop_whatever_the_blocks() -> None:
    x = np.arange(10_000, dtype=float)
    framer = Framer(2048, 1024)
    frames = [f for a in range(0, len(x), 333) for f in framer.push(x[a : a + 333])]
    assert len(frames) == 1 + (len(x) - 2048) // 1024
    for j, frame in enumerate(frames):
        assert frame[0] == j * 1024 and frame[-1] == j * 1024 + 2047


def _spectrum(**options: object) -> SpectrumAnalyser:
    args = {"fft_size": 4096, "window": "hann", "weighting": "Z", "points": None, "reduce": "max", "fmin": 0.0}
    return SpectrumAnalyser(FS, 1, fmax=None, channel=None, format="json", **{**args, **options})  # type: ignore[arg-type]


def test_spectrum_averaging_follows_its_response_time() -> None:
    """A 1 kHz tone steps from -40 to -10 dBFS: the averaged level moves as P(t) = P1 + (P0 - P1)·e^(-t/τ)."""
    tau = 0.5
    analyser = _spectrum(response_time_s=tau)
    quiet, loud = 0.01 * math.sqrt(2), 0.316 * math.sqrt(2)
    analyser.feed((_sine(1000.0, 2.0) * quiet)[:, None])
    before = analyser.snapshot({})["peak_db"]
    assert before == pytest.approx(-40.0, abs=0.05)
    analyser.feed((_sine(1000.0, tau) * loud)[:, None])
    p0, p1 = 10 ** (before / 10), loud**2 / 2
    # frames end every 2048 samples and straddle the step: compare with the law half a frame around t = tau
    expected = [10 * math.log10(p1 + (p0 - p1) * math.exp(-t / tau)) for t in (tau - 0.05, tau + 0.01)]
    assert expected[0] - 0.1 <= analyser.snapshot({})["peak_db"] <= expected[1] + 0.1
    analyser.feed((_sine(1000.0, 10 * tau) * loud)[:, None])
    assert analyser.snapshot({})["peak_db"] == pytest.approx(-10.0, abs=0.05)


def test_peak_markers_hold_the_highest_level_and_fall_at_their_rate() -> None:
    analyser = _spectrum(peak_decay_db_s=20.0)
    analyser.feed((_sine(1000.0, 1.0) * 0.5)[:, None])
    k = round(1000.0 / (FS / 4096))
    held = analyser.snapshot({})["peak_magnitudes_db"][k]
    analyser.feed(np.zeros((FS, 1)))  # one second of silence
    chunk = analyser.snapshot({})
    assert chunk["magnitudes_db"][k] == DB_FLOOR  # the spectrum itself follows the silence
    assert chunk["peak_magnitudes_db"][k] == pytest.approx(held - 20.0, abs=20.0 * 2048 / FS + 0.01)


# -- octave bands: IEC 61260-1:2014 -------------------------------------------------------------------------------
def test_third_octave_centres_are_base_10_exact_with_nominal_labels() -> None:
    centres = [centre_frequency(x, 3) for x in range(-3, 4)]
    assert centres == pytest.approx([501.187, 630.957, 794.328, 1000.0, 1258.925, 1584.893, 1995.262], abs=1e-3)
    labels = [nominal_label(centre_frequency(x, 3), 3) for x in band_indices(3, 20.0, 20000.0)]
    nominal = "20 25 31.5 40 50 63 80 100 125 160 200 250 315 400 500 630 800 1k 1.25k 1.6k 2k 2.5k 3.15k 4k 5k 6.3k"
    assert labels == [*nominal.split(), "8k", "10k", "12.5k", "16k", "20k"]
    octaves = [centre_frequency(x, 1) for x in band_indices(1, 31.5, 16000.0)]
    assert octaves == pytest.approx([1000 * 10 ** (0.3 * x) for x in range(-5, 5)])
    octave_labels = ["31.5", "63", "125", "250", "500", "1k", "2k", "4k", "8k", "16k"]
    assert [nominal_label(f, 1) for f in octaves] == octave_labels


def test_band_edges_and_the_band_holding_440_hz() -> None:
    low, high = band_edges(1000.0, 3)
    assert (float(low), float(high)) == pytest.approx((891.251, 1122.018), abs=1e-3)
    assert float(high / low) == pytest.approx(10**0.1)  # G^(1/3)
    low, high = band_edges(centre_frequency(-4, 3), 3)  # the "400" band: 354.8 - 446.7 Hz
    assert low < 440.0 < high
    bank = OctaveFilterBank(3, FS)
    assert bank.labels[int(np.argmax(bank.response_db(440.0)[:, 0]))] == "400"


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("b", [1, 2, 3, 6, 12, 24])
def test_every_band_meets_iec_61260_class_1(fs: int, b: int) -> None:
    """Table 1 at the standard's normalised frequencies (equation 9), relative to the mid-band gain, for every
    band from 20 Hz to 20 kHz below Nyquist; 0 dB at mid-band; effective bandwidth within ±0.4 dB (5.12).
    Measured: no stopband point closer than 1.3 dB to its limit, every effective bandwidth within 0.2 dB."""
    bank = OctaveFilterBank(b, fs)
    mask = iec.class_1_mask(b)
    closest = math.inf
    for i, fm in enumerate(bank.centres):
        points = [(omega, low, high) for omega, low, high in mask if omega * fm < fs / 2]
        gain = bank.response_db(np.array([fm] + [omega * fm for omega, _, _ in points]), [i])[0]
        assert abs(gain[0]) <= 0.01, (bank.labels[i], gain[0])
        attenuation = gain[0] - gain[1:]
        for (omega, low, high), value in zip(points, attenuation, strict=True):
            assert low <= value <= high, (fs, b, bank.labels[i], round(omega, 4), low, high, round(float(value), 2))
            if low > 0:
                closest = min(closest, value - low)
        # effective bandwidth: ∫ 10^(-ΔA/10) dΩ from G^-5 up to G^5 or Nyquist (the top bands are cut there)
        dense = np.geomspace(iec.G ** (-2 / b), iec.G ** (2 / b), 800)  # the pass band and its skirts
        omega = np.unique(np.concatenate([np.geomspace(iec.G**-5, iec.G**5, 400), dense]))
        omega = omega[omega * fm < fs / 2]
        power = 10 ** ((bank.response_db(omega * fm, [i])[0] - gain[0]) / 10)
        deviation = 10 * math.log10(np.trapezoid(power, omega) / iec.reference_bandwidth(b))
        assert abs(deviation) <= iec.BANDWIDTH_LIMIT_DB, (bank.labels[i], deviation)
        assert abs(deviation) <= 0.2 + 1e-3, (bank.labels[i], deviation)
    assert closest >= 1.3


def test_streamed_bank_is_the_bank_response_and_bands_run_decimated() -> None:
    """Sinusoids through ``process`` in odd-sized blocks (decimation, aliasing and all) come out at the gains
    ``response_db`` computes, which the class 1 test checks: within 0.02 dB down to -80 dB (the power of 1.5 s
    of a 31.5 Hz tone is only that close to its mean square: 47 periods)."""
    fs = 48000
    bank = OctaveFilterBank(3, fs)
    assert bank.stage_rates[:3] == [48000, 24000, 12000] and len(bank.stage_rates) == 9
    assert bank.orders[bank.labels.index("16k")] == 5 and bank.orders[bank.labels.index("1k")] == 3
    for f0 in (31.5, 440.0, 1000.0, 15000.0, 23000.0):
        bank = OctaveFilterBank(3, fs)
        x = np.sin(2 * np.pi * f0 * np.arange(3 * fs) / fs)
        outputs = [bank.process(x[a : a + 997]) for a in range(0, len(x), 997)]
        measured = np.empty(len(bank))
        for k, bands in enumerate(bank.stage_bands):
            y = np.concatenate([out[k] for out in outputs], axis=1)
            measured[bands] = 10 * np.log10(np.mean(y[:, y.shape[1] // 2 :] ** 2, axis=1) / 0.5)
        expected = bank.response_db(f0)[:, 0]
        near = expected > -80
        assert np.max(np.abs(measured[near] - expected[near])) <= 0.02, f0


def test_filter_bank_is_0_db_at_centres_and_3_db_down_at_edges() -> None:
    bank = OctaveFilterBank(3, FS, 20.0, 20000.0)
    assert len(bank) == 31
    for i, (fm, low, high) in enumerate(zip(bank.centres, bank.lower, bank.upper, strict=True)):
        response = bank.response_db(np.array([fm, low, high]))[i]
        assert response == pytest.approx([0.0, -3.01, -3.01], abs=0.05)
    assert OctaveFilterBank(3, 44100).labels[-1] == "16k"  # bands whose upper edge passes Nyquist are left out


# -- pitch ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f0", [55.0, 82.41, 220.0, 440.0, 1000.0, 1990.0])
def test_yin_on_pure_and_harmonic_tones(f0: float) -> None:
    n = 4096
    t = np.arange(n) / FS
    pure = 0.5 * np.sin(2 * np.pi * f0 * t)
    rich = pure + 0.4 * np.sin(2 * np.pi * 2 * f0 * t + 0.3) + 0.3 * np.sin(2 * np.pi * 3 * f0 * t + 1.1)
    for x in (pure, rich):
        result = yin(x, FS, 50.0, 2000.0)
        assert result.frequency_hz is not None
        assert 1200 * abs(math.log2(result.frequency_hz / f0)) < 0.5  # cents
        assert result.confidence > 0.95


def test_yin_has_no_confidence_in_noise_or_silence() -> None:
    noise = np.random.default_rng(1).standard_normal(4096) * 0.1
    assert yin(noise, FS, 50.0, 2000.0).confidence < 0.3
    assert yin(np.zeros(4096), FS, 50.0, 2000.0).confidence == 0.0


def test_tones_above_fmax_are_never_voiced_at_a_subharmonic() -> None:
    """Every 37 Hz from 2.01 kHz to 23.9 kHz, two phases: YIN reports no frequency (the old search from τmin
    read a 5 kHz tone as 1667 Hz)."""
    n = math.ceil(3 * FS / 65)
    for f0 in np.arange(2010.0, 23900.0, 37.0):
        for phase in (0.0, 1.1):
            x = 0.5 * np.sin(2 * np.pi * f0 * np.arange(n) / FS + phase)
            result = yin(x, FS, 65.0, 2000.0)
            assert result.frequency_hz is None, (f0, result)


@pytest.mark.parametrize("frame_s", [None, 0.06, 0.09])
def test_noisy_tone_has_no_gross_pitch_errors(frame_s: float | None) -> None:
    """A 220 Hz tone in white noise at 10 dB SNR (5 s, a frame every 20 ms; the default 46 ms frame, 60 and 90 ms):
    no frame more than 50 cents off (the first-local-minimum rule: 26 % with 45 ms), and every frame voiced."""
    rng = np.random.default_rng(0)
    x = np.sin(2 * np.pi * 220 * np.arange(5 * FS) / FS) + rng.standard_normal(5 * FS) * math.sqrt(0.5 / 10)
    analyser = PitchAnalyser(
        FS, 1, fmin=65.0, fmax=2000.0, frame_s=frame_s, threshold=0.1, min_confidence=0.7, min_level_dbfs=-60.0,
        channel=None,
    )  # fmt: skip
    errors = frames = 0
    for start in range(0, len(x), 960):
        analyser.feed(x[start : start + 960, None])
        if analyser.ready:
            chunk = analyser.snapshot({})
            frames += 1
            assert chunk["voiced"]
            errors += abs(1200 * math.log2(chunk["frequency_hz"] / 220.0)) > 50
    assert frames > 240 and errors == 0


def test_voicing_gate_and_frame_length() -> None:
    def analyse(x: np.ndarray, **options: float) -> dict:
        args = {"fmin": 65.0, "fmax": 2000.0, "threshold": 0.1, "min_confidence": 0.7, "min_level_dbfs": -60.0}
        analyser = PitchAnalyser(FS, 1, channel=None, **{**args, **options})  # type: ignore[arg-type]
        analyser.feed(x[:, None])
        assert analyser.ready
        return analyser.snapshot({"t_s": 0.0})

    tone = _sine(440.0, 0.2, 0.5)
    voiced = analyse(tone)
    assert voiced["voiced"] and voiced["note"] == "A4" and voiced["frequency_hz"] == pytest.approx(440.0, abs=0.05)
    quiet = analyse(tone * 1e-4)  # -89 dBFS: below the level gate
    assert not quiet["voiced"] and quiet["frequency_hz"] is None and quiet["note"] is None
    assert quiet["confidence"] > 0.9  # periodic, just too quiet
    noise = analyse(np.random.default_rng(2).standard_normal(len(tone)) * 0.1)
    assert not noise["voiced"] and noise["frequency_hz"] is None
    high = analyse(_sine(5000.0, 0.2, 0.5))  # above fmax: not voiced at 1667 Hz
    assert not high["voiced"] and high["frequency_hz"] is None
    default = PitchAnalyser(
        FS, 1, fmin=65.0, fmax=2000.0, threshold=0.1, min_confidence=0.7, min_level_dbfs=-60.0, channel=None
    )
    assert default.frame_s == pytest.approx(3 / 65, abs=1 / FS)  # three periods of fmin: 46 ms
    assert analyse(tone, frame_s=0.09)["frequency_hz"] == pytest.approx(440.0, abs=0.05)
    with pytest.raises(ValueError, match=r"frame_s must be between 2/fmin = 0.0308 s"):
        analyse(tone, frame_s=0.02)


@pytest.mark.parametrize(
    ("frequency", "name", "cents"),
    [(440.0, "A4", 0.0), (261.6256, "C4", 0.0), (466.1638, "A#4", 0.0), (27.5, "A0", 0.0), (4186.009, "C8", 0.0),
     (445.0, "A4", 19.56), (430.0, "A4", -39.80), (452.0, "A4", 46.58)],
)  # fmt: skip
def test_note_names_and_cents(frequency: float, name: str, cents: float) -> None:
    note = note_of(frequency)
    assert note.name == name
    assert note.cents == pytest.approx(cents, abs=0.01)


# -- generators -------------------------------------------------------------------------------------------------
def test_generated_signals_are_continuous_across_blocks_and_at_their_level() -> None:
    for kind in ("sine", "sweep", "noise"):
        whole = SignalGenerator(kind, FS, level_dbfs=-6.0, sweep_s=0.5).next(FS)
        blocks = SignalGenerator(kind, FS, level_dbfs=-6.0, sweep_s=0.5)
        pieces = np.concatenate([blocks.next(n) for n in (1, 999, 1024, 20000, FS - 22024)])
        assert np.allclose(whole, pieces, atol=1e-9), kind
    sine = SignalGenerator("sine", FS, frequency_hz=440.0, level_dbfs=0.0).next(FS)
    assert float(rms_db(sine)) == pytest.approx(-3.01, abs=0.01) and np.max(np.abs(sine)) == pytest.approx(1.0)
    noise = SignalGenerator("noise", FS, level_dbfs=-20.0).next(FS)
    assert float(rms_db(noise)) == pytest.approx(-20.0, abs=0.1)
    sweep = SignalGenerator("sweep", FS, frequency_hz=100.0, end_frequency_hz=1000.0, sweep_s=1.0)
    assert sweep.instantaneous_frequency(0.5) == pytest.approx(math.sqrt(100.0 * 1000.0))
    with pytest.raises(ValueError, match="frequency_hz must be in"):
        SignalGenerator("sine", FS, frequency_hz=30000.0)


# -- the device source's queue (the PortAudio callback's bookkeeping, without a device) ---------------------------
def test_device_queue_counts_what_it_drops_and_keeps_order() -> None:
    sounddevice = pytest.importorskip("sounddevice", exc_type=OSError)  # needs libportaudio2
    source = DeviceSource(None, block_size=256, sample_rate=48000, channels=1, queue_s=0.0)  # room for 4 blocks
    ok, overflow = sounddevice.CallbackFlags(), sounddevice.CallbackFlags()
    overflow.input_overflow = True
    for i in range(6):
        source._on_audio(np.full((256, 1), i, dtype=np.float32), 256, None, ok)
    source._on_audio(np.zeros((256, 1), dtype=np.float32), 256, None, overflow)
    assert (source.dropped, source.xruns, source.overflows) == (3, 1, 4)
    source._last_data = time.monotonic()
    assert [int(source.read(0.01)[0, 0]) for _ in range(4)] == [0, 1, 2, 3]  # the oldest blocks, in order
    assert source.read(0.01) is None  # empty: nothing yet, not the end
    source.close()
    assert source.released
