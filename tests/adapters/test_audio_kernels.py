"""The audio adapter's numeric kernels against published values and closed-form results."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import signal as sps

from adapters.audio.analysers import PitchAnalyser
from adapters.audio.signal.generators import SignalGenerator
from adapters.audio.signal.levels import DB_FLOOR, ExponentialAverager, PeakHold, power_to_db, rms_db
from adapters.audio.signal.notes import note_of
from adapters.audio.signal.octave import (
    OctaveFilterBank,
    band_edges,
    band_indices,
    centre_frequency,
    nominal_label,
)
from adapters.audio.signal.spectrum import (
    amplitude_spectrum_db,
    bin_frequencies,
    find_peak,
    make_window,
    reduce_log,
)
from adapters.audio.signal.weighting import weighting_db, weighting_sos
from adapters.audio.signal.yin import yin
from adapters.audio.sources import DeviceSource

FS = 48000

# IEC 61672-1:2013 Table 3: nominal frequency -> (A, C) weighting in dB, given to 0.1 dB
IEC_61672_TABLE = {
    10: (-70.4, -14.3), 12.5: (-63.4, -11.2), 16: (-56.7, -8.5), 20: (-50.5, -6.2), 25: (-44.7, -4.4),
    31.5: (-39.4, -3.0), 40: (-34.6, -2.0), 50: (-30.2, -1.3), 63: (-26.2, -0.8), 80: (-22.5, -0.5),
    100: (-19.1, -0.3), 125: (-16.1, -0.2), 160: (-13.4, -0.1), 200: (-10.9, 0.0), 250: (-8.6, 0.0),
    315: (-6.6, 0.0), 400: (-4.8, 0.0), 500: (-3.2, 0.0), 630: (-1.9, 0.0), 800: (-0.8, 0.0),
    1000: (0.0, 0.0), 1250: (0.6, 0.0), 1600: (1.0, -0.1), 2000: (1.2, -0.2), 2500: (1.3, -0.3),
    3150: (1.2, -0.5), 4000: (1.0, -0.8), 5000: (0.5, -1.3), 6300: (-0.1, -2.0), 8000: (-1.1, -3.0),
    10000: (-2.5, -4.4), 12500: (-4.3, -6.2), 16000: (-6.6, -8.5), 20000: (-9.3, -11.2),
}  # fmt: skip


def _exact(nominal: float) -> float:
    """The exact base-10 1/3-octave frequency behind a nominal one (the table is computed there)."""
    return 10 ** (round(10 * math.log10(nominal)) / 10)


def _sine(frequency: float, seconds: float = 1.0, amplitude: float = 1.0, fs: int = FS) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * fs)) / fs)


# -- weighting --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nominal", sorted(IEC_61672_TABLE))
def test_a_and_c_weighting_match_the_iec_61672_table(nominal: float) -> None:
    a_db, c_db = IEC_61672_TABLE[nominal]
    f = _exact(nominal)
    assert float(weighting_db("A", f)) == pytest.approx(a_db, abs=0.1)
    assert float(weighting_db("C", f)) == pytest.approx(c_db, abs=0.1)
    assert float(weighting_db("Z", f)) == 0.0


def test_weightings_are_exactly_0_db_at_1_khz_and_floor_at_dc() -> None:
    assert float(weighting_db("A", 1000.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(weighting_db("C", 1000.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(weighting_db("A", 0.0)) == DB_FLOOR


def test_digital_a_weighting_follows_the_analytic_curve_below_5_khz() -> None:
    f = np.array([_exact(n) for n in IEC_61672_TABLE if n <= 5000])
    _, h = sps.sosfreqz(weighting_sos("A", FS), worN=f, fs=FS)
    assert np.allclose(20 * np.log10(np.abs(h)), weighting_db("A", f), atol=0.15)
    assert weighting_sos("Z", FS) is None
    with pytest.raises(ValueError, match="weighting must be one of A, C, Z"):
        weighting_db("B", 100.0)


# -- levels -----------------------------------------------------------------------------------------------------
def test_full_scale_sine_is_minus_3_01_dbfs_rms() -> None:
    x = _sine(1000.0)
    assert float(rms_db(x)) == pytest.approx(-3.0103, abs=0.001)
    assert float(rms_db(_sine(1000.0, amplitude=0.5))) == pytest.approx(-9.0309, abs=0.001)
    assert float(power_to_db(0.0)) == DB_FLOOR


@pytest.mark.parametrize(("name", "tau"), [("fast", 0.125), ("slow", 1.0)])
def test_time_weighting_step_response_and_decay_rate(name: str, tau: float) -> None:
    averager = ExponentialAverager(tau, FS, 1)
    on = averager.process(np.ones((round(5 * tau * FS), 1)))[:, 0]
    # at t = tau after a step the level is 10·log10(1 - 1/e) = -1.99 dB below the final level
    assert float(power_to_db(on[round(tau * FS) - 1])) == pytest.approx(10 * math.log10(1 - math.exp(-1)), abs=0.01)
    off = averager.process(np.zeros((FS // 2, 1)))[:, 0]
    # after the signal stops the level falls linearly in dB: 10·log10(e)/tau dB per second (34.7 Fast, 4.3 Slow)
    decay_per_s = float(power_to_db(off[FS // 4 - 1]) - power_to_db(off[FS // 2 - 1])) / 0.25
    assert decay_per_s == pytest.approx(10 * math.log10(math.e) / tau, rel=1e-3)


def test_peak_hold_holds_then_releases() -> None:
    hold = PeakHold(1.0, 1)
    assert hold.update(np.array([0.5]), 0.0)[0] == 0.5
    assert hold.update(np.array([0.1]), 0.9)[0] == 0.5  # held
    assert hold.update(np.array([0.2]), 1.1)[0] == 0.2  # 1.1 s after the peak: released to the latest peak
    assert hold.update(np.array([0.3]), 1.2)[0] == 0.3  # a higher peak takes over at once


# -- spectrum ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", ["hann", "hamming", "blackman", "blackmanharris", "flattop", "rectangular"])
def test_bin_centred_sine_reads_its_rms_level_whatever_the_window(window: str) -> None:
    n = 4096
    f = 100 * FS / n  # exactly on bin 100
    levels = amplitude_spectrum_db(_sine(f, amplitude=0.5)[:n], make_window(window, n))
    assert int(np.argmax(levels)) == 100
    assert float(levels[100]) == pytest.approx(-9.03, abs=0.01)


def test_parabolic_interpolation_finds_an_off_bin_peak() -> None:
    n = 4096
    frequencies = bin_frequencies(n, FS)
    for f in (440.0, 1234.5, 5000.3):
        levels = amplitude_spectrum_db(_sine(f)[:n], make_window("hann", n))
        peak_hz, peak_db = find_peak(frequencies, levels, 20.0, 20000.0)
        assert peak_hz == pytest.approx(f, abs=0.03 * FS / n)  # a few hundredths of a bin
        assert peak_db == pytest.approx(-3.01, abs=0.3)  # the parabola recovers most of the scalloping loss


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


# -- octave bands -----------------------------------------------------------------------------------------------
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


def test_filter_bank_is_0_db_at_centres_and_3_db_down_at_edges() -> None:
    bank = OctaveFilterBank(3, FS, 20.0, 20000.0)
    assert len(bank) == 31
    for i, (fm, low, high) in enumerate(zip(bank.centres, bank.lower, bank.upper, strict=True)):
        response = bank.response_db(np.array([fm, low, high]))[i]
        assert response == pytest.approx([0.0, -3.01, -3.01], abs=0.05)
    x = _sine(1000.0, 1.0, 0.5)  # the filtered tone keeps its level in its band
    out = bank.process(x)
    k = bank.labels.index("1k")
    assert float(rms_db(out[k, FS // 2 :])) == pytest.approx(-9.03, abs=0.05)
    # bands whose upper edge passes Nyquist are left out
    assert OctaveFilterBank(3, 44100).labels[-1] == "16k"


# -- pitch ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f0", [55.0, 82.41, 220.0, 440.0, 1000.0])
def test_yin_on_pure_and_harmonic_tones(f0: float) -> None:
    n = 4096
    t = np.arange(n) / FS
    pure = 0.5 * np.sin(2 * np.pi * f0 * t)
    rich = pure + 0.4 * np.sin(2 * np.pi * 2 * f0 * t + 0.3) + 0.3 * np.sin(2 * np.pi * 3 * f0 * t + 1.1)
    for x in (pure, rich):
        result = yin(x, FS, 50.0, 2000.0)
        assert result.frequency_hz == pytest.approx(f0, rel=5e-4)
        assert result.confidence > 0.95


def test_yin_has_no_confidence_in_noise_or_silence() -> None:
    noise = np.random.default_rng(1).standard_normal(4096) * 0.1
    assert yin(noise, FS, 50.0, 2000.0).confidence < 0.6
    assert yin(np.zeros(4096), FS, 50.0, 2000.0).confidence == 0.0


def test_voicing_gate_reports_unvoiced_frames_as_null() -> None:
    def analyse(x: np.ndarray) -> dict:
        analyser = PitchAnalyser(
            FS, 1, fmin=50.0, fmax=2000.0, threshold=0.15, min_confidence=0.8, min_level_dbfs=-60.0, channel=None
        )
        analyser.feed(x[:, None])
        assert analyser.ready
        return analyser.snapshot({"t_s": 0.0})

    tone = _sine(440.0, 0.2, 0.5)
    voiced = analyse(tone)
    assert voiced["voiced"] and voiced["note"] == "A4" and voiced["frequency_hz"] == pytest.approx(440.0, abs=0.5)
    quiet = analyse(tone * 1e-4)  # -89 dBFS: below the level gate
    assert not quiet["voiced"] and quiet["frequency_hz"] is None and quiet["note"] is None
    assert quiet["confidence"] > 0.9  # periodic, just too quiet
    noise = analyse(np.random.default_rng(2).standard_normal(len(tone)) * 0.1)
    assert not noise["voiced"] and noise["frequency_hz"] is None


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
