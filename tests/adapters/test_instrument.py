"""The instrument monitor: change detection and the simulated lab as units, then the tools through a real worker.

The simulated lab is seeded and steps once per poll, so what a monitor streams is compared exactly with what the
same lab reads when driven directly. QCoDeS tests run only where qcodes is importable (it is an optional extra).
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.instrument.changes import ChangeTracker, Tolerance, changed_fields, tolerances_for, value_changed
from adapters.instrument.filters import matches, select
from adapters.instrument.readings import Reading, normalize_value, read_all
from adapters.instrument.sources.base import ParameterInfo
from adapters.instrument.sources.simulated import SimulatedSource
from adapters.instrument.sources.simulated_models import Qubit, Thermometer
from python_worker.client import Client, InvalidArgumentsError, ToolError

from ..support import eventually
from ..workers import running_worker

ADAPTER = "adapters.instrument:InstrumentAdapter"
PROMPT = 2.0  # "promptly": cancellation reaches the monitor well within this
HAVE_QCODES = importlib.util.find_spec("qcodes") is not None
ALL_NAMES = [
    "thermometer_temperature",
    "thermometer_excitation",
    "dmm_voltage",
    "dmm_mode",
    "dmm_range",
    "q0_frequency",
    "q0_flux_bias",
    "q1_frequency",
    "q1_flux_bias",
]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with running_worker(ADAPTER) as worker, Client(worker.target, timeout=30) as c:
        yield c


def reading(value: Any, unit: str = "V", error: str | None = None, name: str = "p") -> Reading:
    return Reading("inst", name, f"inst_{name}", value, unit, 0.0, error)


def direct_series(seed: int, polls: int) -> list[dict[str, tuple[Any, str]]]:
    """(value, unit) of every parameter at each poll, read from the lab itself (no monitor involved)."""
    lab = SimulatedSource(seed)
    series = []
    for _ in range(polls):
        lab.begin_poll()
        series.append({info.full_name: lab.read(info) for info in lab.parameters()})
    return series


def stream_data(client: Client, **args: Any) -> list[dict[str, Any]]:
    return [chunk.data for chunk in client.execute_stream("monitor", **args)]


def wait_finished(client: Client, monitor_id: str, timeout: float = 5.0) -> dict[str, Any]:
    def finished() -> dict[str, Any]:
        status = client.execute("active_monitors")
        for record in status["finished"]:
            if record["monitor_id"] == monitor_id:
                return {**record, "active": status["active"]}
        raise AssertionError(f"monitor {monitor_id!r} did not finish: {status}")

    return eventually(finished, timeout=timeout)


# -- change detection ----------------------------------------------------------------------------------------
def test_tolerance_is_absolute_or_relative_to_the_reference() -> None:
    tol = Tolerance(absolute=0.5)
    assert not value_changed(1.0, 1.5, tol)  # |1.5 - 1.0| = 0.5 is not more than 0.5
    assert value_changed(1.0, 1.75, tol)
    assert value_changed(1.0, 0.25, tol)
    rel = Tolerance(relative=1e-3)  # 1000 +- 1
    assert not value_changed(1000, 1001, rel)
    assert value_changed(1000, 1002, rel)
    assert not value_changed(1000, 1001.5, Tolerance(absolute=2, relative=1e-3))  # the larger bound applies
    assert value_changed(1, 2) and not value_changed(3, 3.0)  # exact by default; int and float are both numbers


def test_nan_and_infinity() -> None:
    huge = Tolerance(absolute=1e300)
    assert not value_changed(math.nan, math.nan, huge)
    assert value_changed(1.0, math.nan, huge) and value_changed(math.nan, 1.0, huge)
    assert not value_changed(math.inf, math.inf, huge)
    assert value_changed(math.inf, 1.0, huge) and value_changed(-math.inf, math.inf, huge)


def test_non_numeric_values_change_on_inequality() -> None:
    huge = Tolerance(absolute=1e9)  # tolerances are for numbers only
    assert value_changed("DC", "AC", huge) and not value_changed("DC", "DC", huge)
    assert value_changed(True, 1, huge) and value_changed(False, True, huge)  # bool is not a number here
    assert value_changed(None, 0.0, huge) and value_changed(0.0, None, huge)
    assert not value_changed([1, 2], [1, 2], huge) and value_changed([1, 2], [1, 3], huge)
    assert not value_changed({"a": 1, "b": 2}, {"b": 2, "a": 1}, huge)


def test_changed_fields_cover_value_unit_and_error() -> None:
    assert changed_fields(reading(1.0), reading(1.0)) == ()
    assert changed_fields(reading(1.0), reading(2.0)) == ("value",)
    assert changed_fields(reading(0.05, "V"), reading(0.0354, "Vrms")) == ("value", "unit")
    assert changed_fields(reading(1.0, "V"), reading(1.05, "mV"), Tolerance(0.1)) == ("unit",)
    failed = reading(None, error="TimeoutError: no answer")
    assert changed_fields(reading(1.0), failed) == ("value", "error")
    assert changed_fields(failed, failed) == ()
    assert changed_fields(failed, reading(1.0)) == ("value", "error")


def test_tracker_compares_with_the_last_reported_value() -> None:
    # a drift of 4 per poll under a tolerance of 10 is reported whenever it has added up to more than 10
    tracker = ChangeTracker({"inst_p": Tolerance(absolute=10)})
    tracker.reset([reading(0)])
    reported = []
    for value in range(4, 41, 4):
        events = tracker.update([reading(value)])
        reported += [(e.reading.value, e.previous.value, e.changed_fields) for e in events]
    assert reported == [(12, 0, ("value",)), (24, 12, ("value",)), (36, 24, ("value",))]
    assert [r.value for r in tracker.current()] == [36]


def test_tolerance_overrides_take_the_first_matching_pattern() -> None:
    params = [ParameterInfo("q0", "frequency", "Hz"), ParameterInfo("dmm", "voltage", "V"), ParameterInfo("t", "x")]
    tols = tolerances_for(params, 0.5, 1e-6, {"q0.freq*": 1e3, "q*": 7.0, "voltage": 1e-5})
    assert tols == {
        "q0_frequency": Tolerance(1e3, 1e-6),
        "dmm_voltage": Tolerance(1e-5, 1e-6),
        "t_x": Tolerance(0.5, 1e-6),
    }


def test_glob_patterns_match_instrument_parameter_full_and_dotted_names() -> None:
    info = ParameterInfo("my_dmm", "voltage", "V")
    assert all(matches(p, info) for p in ["my_dmm", "voltage", "my_dmm_voltage", "my_dmm.voltage", "my_*.v*", "*"])
    assert not any(matches(p, info) for p in ["dmm", "Voltage", "my_dmm.current", "v"])
    lab = SimulatedSource(0).parameters()
    names = [p.full_name for p in select(lab, ["q*", "temperature"], ["*flux*"])]
    assert names == ["thermometer_temperature", "q0_frequency", "q1_frequency"]
    assert [p.full_name for p in select(lab, None, ["dmm", "q1"])] == ALL_NAMES[:2] + ALL_NAMES[5:7]
    assert len(select(lab, [], None)) == len(ALL_NAMES)  # an empty include list selects everything
    with pytest.raises(ValueError, match=r"no parameter matches include=\['fridge\*'\]"):
        select(lab, ["fridge*"], None)


def test_values_are_made_json_friendly() -> None:
    assert normalize_value(np.float32(0.5)) == 0.5 and type(normalize_value(np.int64(3))) is int
    assert normalize_value(np.arange(3)) == [0, 1, 2]
    assert normalize_value((1, np.bool_(True))) == [1, True]
    assert normalize_value(1 + 2j) == {"real": 1.0, "imag": 2.0}
    assert normalize_value({1: np.float64(2)}) == {"1": 2.0}
    assert normalize_value(Path("/x")) == "/x"
    # JSON has no NaN or infinity (Krait refuses them in a chunk): a reading without a finite value is null
    assert normalize_value(math.nan) is None and normalize_value(np.float64("-inf")) is None
    assert normalize_value([1.0, math.inf]) == [1.0, None]
    assert normalize_value(complex(math.nan, 1)) == {"real": None, "imag": 1.0}


def test_a_failing_read_becomes_an_error_reading() -> None:
    lab = SimulatedSource(0, faults=["dmm.voltage"])
    readings = read_all(lab, lab.parameters())
    assert readings is not None
    by_name = {r.full_name: r for r in readings}
    failed = by_name["dmm_voltage"]
    assert failed.value is None and failed.unit == "V"
    assert failed.error == "SimulatedInstrumentError: dmm_voltage: no answer from dmm (simulated fault)"
    assert all(r.error is None for r in readings if r is not failed)


# -- the simulated lab ---------------------------------------------------------------------------------------
def test_simulation_is_reproducible_per_seed() -> None:
    assert direct_series(5, 30) == direct_series(5, 30)
    assert direct_series(5, 30) != direct_series(6, 30)
    first = direct_series(5, 1)[0]
    assert first["thermometer_temperature"] == (4.0, "K") and first["dmm_mode"] == ("DC", "")
    assert first["q0_frequency"] == (5.1e9, "Hz") and first["q1_flux_bias"] == (0.12, "V")


def test_models_follow_their_formulas() -> None:
    rng = np.random.default_rng(0)
    # no noise: T_k = 4 + k * drift, read at 0.1 mK
    thermo = Thermometer("t", rng, start_k=4.0, drift_k=3e-4, sigma_k=0.0)
    temps = []
    for _ in range(8):
        temps.append(thermo.value("temperature")[0])
        thermo.step()
    assert temps == [4.0, 4.0003, 4.0006, 4.0009, 4.0012, 4.0015, 4.0018, 4.0021]
    # with noise: the mean step is the drift (within 5 standard errors)
    thermo = Thermometer("t", np.random.default_rng(1), start_k=0.0, drift_k=1e-3, sigma_k=1e-2)
    n = 20_000
    for _ in range(n):
        thermo.step()
    assert abs(thermo.temperature / n - 1e-3) < 5 * 1e-2 / math.sqrt(n)
    # Ornstein-Uhlenbeck: spread around the mean tends to sigma / sqrt(theta (2 - theta))
    qubit = Qubit("q", np.random.default_rng(2), mean_hz=5e9, theta=0.1, sigma_hz=1e3)
    samples = []
    for _ in range(50_000):
        qubit.step()
        samples.append(qubit.frequency - 5e9)
    assert np.std(samples) == pytest.approx(1e3 / math.sqrt(0.1 * 1.9), rel=0.05)
    assert abs(np.mean(samples)) < 200


# -- the monitor through a worker -----------------------------------------------------------------------------
def test_first_update_is_a_snapshot_of_every_reading(client: Client) -> None:
    before = time.time()
    chunks = stream_data(client, seed=1, max_polls=1, monitor_id="snap")
    snapshot, end = chunks
    assert snapshot["type"] == "snapshot" and snapshot["update_index"] == 0 and snapshot["poll_index"] == 0
    assert snapshot["monitor_id"] == "snap"
    assert snapshot["source"] == {"kind": "simulated", "seed": 1, "faults": []}
    readings = snapshot["readings"]
    assert [r["full_name"] for r in readings] == ALL_NAMES
    expected = direct_series(1, 1)[0]
    for r in readings:
        assert set(r) == {"instrument", "parameter", "full_name", "value", "unit", "ts", "error"}
        assert r["full_name"] == f"{r['instrument']}_{r['parameter']}"
        assert (r["value"], r["unit"]) == expected[r["full_name"]]
        assert r["error"] is None and before <= r["ts"] <= time.time()
    units = {r["full_name"]: r["unit"] for r in readings}
    assert units["thermometer_temperature"] == "K" and units["dmm_voltage"] == "V" and units["q0_frequency"] == "Hz"
    assert end == {
        "type": "end",
        "reason": "max_polls",
        "polls": 1,
        "updates": 1,
        "ts": pytest.approx(time.time(), abs=5),
    }


def test_deltas_carry_only_the_parameters_that_changed(client: Client) -> None:
    polls = 60
    chunks = stream_data(client, seed=1, max_polls=polls, poll_interval=0.005)
    series = direct_series(1, polls)
    deltas = {c["poll_index"]: c for c in chunks if c["type"] == "delta"}
    expected_polls = [k for k in range(1, polls) if series[k] != series[k - 1]]
    assert sorted(deltas) == expected_polls
    assert [deltas[k]["update_index"] for k in expected_polls] == list(range(1, len(expected_polls) + 1))
    unit_changes = 0
    for k in expected_polls:
        changes = deltas[k]["changes"]
        changed = {name for name in ALL_NAMES if series[k][name] != series[k - 1][name]}
        assert [c["reading"]["full_name"] for c in changes] == [n for n in ALL_NAMES if n in changed]
        for c in changes:
            name = c["reading"]["full_name"]
            (value, unit), (old_value, old_unit) = series[k][name], series[k - 1][name]
            assert (c["reading"]["value"], c["reading"]["unit"]) == (value, unit)
            assert (c["previous"]["value"], c["previous"]["unit"]) == (old_value, old_unit)
            fields = ["value"] * (value != old_value) + ["unit"] * (unit != old_unit)
            assert c["changed_fields"] == fields
            unit_changes += "unit" in fields
    assert unit_changes >= 1  # seed 1 switches the DMM between DC (V) and AC (Vrms) within 60 polls
    never = {"thermometer_excitation", "q0_flux_bias", "q1_flux_bias"}
    assert not never & {c["reading"]["full_name"] for d in deltas.values() for c in d["changes"]}
    assert chunks[-1]["reason"] == "max_polls" and chunks[-1]["updates"] == len(deltas) + 1


def test_tolerance_suppresses_small_numeric_changes(client: Client) -> None:
    polls, tol, per_param = 60, 1e-3, {"frequency": 1.5e4, "voltage": 2e-6}
    chunks = stream_data(client, seed=1, max_polls=polls, poll_interval=0.005, tolerance=tol, tolerances=per_param)
    got = {
        (c["poll_index"], e["reading"]["full_name"], e["reading"]["value"]) for c in chunks[1:-1] for e in c["changes"]
    }
    # the rule, applied by hand to the lab's own series: numbers move more than their tolerance from the last
    # reported value; anything else (and units) on inequality
    series = direct_series(1, polls)
    expected = set()
    for name in ALL_NAMES:
        limit = next((v for k, v in per_param.items() if name.endswith(k)), tol)
        ref_value, ref_unit = series[0][name]
        for k in range(1, polls):
            value, unit = series[k][name]
            moved = abs(value - ref_value) > limit if isinstance(value, float) else value != ref_value
            if moved or unit != ref_unit:
                expected.add((k, name, value))
                ref_value, ref_unit = value, unit
    assert got == expected
    untolerated = stream_data(client, seed=1, max_polls=polls, poll_interval=0.005)
    all_events = sum(len(c["changes"]) for c in untolerated[1:-1])
    assert 0 < len(got) < all_events / 2
    assert any(name == "dmm_mode" for _, name, _ in got)  # non-numeric changes are never tolerated


def test_include_and_exclude_globs_select_parameters(client: Client) -> None:
    snapshot = stream_data(client, seed=2, max_polls=1, include=["q*", "temperature"], exclude=["*flux*"])[0]
    assert [r["full_name"] for r in snapshot["readings"]] == ["thermometer_temperature", "q0_frequency", "q1_frequency"]
    chunks = stream_data(client, seed=2, max_polls=20, poll_interval=0.005, include=["dmm.v*", "q1_frequency"])
    assert [r["full_name"] for r in chunks[0]["readings"]] == ["dmm_voltage", "q1_frequency"]
    assert {e["reading"]["full_name"] for c in chunks[1:-1] for e in c["changes"]} <= {"dmm_voltage", "q1_frequency"}
    with pytest.raises(ToolError, match=r"no parameter matches include=\['fridge\*'\]") as info:
        stream_data(client, include=["fridge*"])
    assert info.value.type == "ValueError"


def test_an_instrument_error_is_a_field_of_its_reading_not_the_end(client: Client) -> None:
    chunks = stream_data(client, seed=1, max_polls=10, poll_interval=0.005, faults=["dmm.voltage"])
    failed = {r["full_name"]: r for r in chunks[0]["readings"]}["dmm_voltage"]
    assert failed["value"] is None and failed["error"].startswith("SimulatedInstrumentError: dmm_voltage")
    changed = [e["reading"]["full_name"] for c in chunks[1:-1] for e in c["changes"]]
    assert "q0_frequency" in changed and "dmm_voltage" not in changed  # still failing: no change to report
    assert chunks[-1]["reason"] == "max_polls" and chunks[-1]["polls"] == 10


def test_max_updates_and_duration_end_the_stream(client: Client) -> None:
    chunks = stream_data(client, seed=1, max_updates=3, poll_interval=0.005)
    assert [c["type"] for c in chunks] == ["snapshot", "delta", "delta", "end"]
    assert chunks[-1]["reason"] == "max_updates" and chunks[-1]["updates"] == 3
    chunks = stream_data(client, seed=1, duration_s=0.3, poll_interval=0.05, include=["flux_bias"])
    assert [c["type"] for c in chunks] == ["snapshot", "end"]  # constants: nothing changes, nothing is sent
    assert chunks[-1]["reason"] == "duration" and chunks[-1]["polls"] >= 2


def test_heartbeats_keep_a_quiet_stream_alive_even_between_polls(client: Client) -> None:
    chunks = stream_data(client, seed=1, poll_interval=30, heartbeat_s=0.1, duration_s=0.55, include=["flux_bias"])
    types = [c["type"] for c in chunks]
    assert types[0] == "snapshot" and types[-1] == "end" and chunks[-1]["reason"] == "duration"
    beats = chunks[1:-1]
    assert len(beats) >= 2 and set(types[1:-1]) == {"heartbeat"}
    assert all(b["last_update_index"] == 0 and b["polls"] == 1 for b in beats)  # alive, between two polls
    assert chunks[-1]["polls"] == 1


@pytest.mark.parametrize("poll_interval", [30.0, 0.001])
def test_cancellation_stops_polling_promptly(client: Client, poll_interval: float) -> None:
    # a slow monitor is cancelled while it sleeps (ctx.sleep wakes), a fast one at its next yield
    monitor_id = f"cancel-{poll_interval}"
    stream = client.stream("monitor", {"seed": 1, "poll_interval": poll_interval, "monitor_id": monitor_id})
    assert next(stream).data["type"] == "snapshot"
    if poll_interval < 1:
        for _ in range(5):
            assert next(stream).data["type"] == "delta"
    status = client.execute("active_monitors")
    assert monitor_id in [m["monitor_id"] for m in status["monitors"]]
    cancelled_at = time.time()
    stream.close()
    record = wait_finished(client, monitor_id)
    assert record["reason"] == "cancelled" and record["source_closed"]
    assert record["stopped_at"] - cancelled_at < PROMPT
    assert record["active"] == 0
    if poll_interval > 1:
        assert record["polls"] == 1  # it never polled again
    polls = record["polls"]
    time.sleep(0.1)
    assert wait_finished(client, monitor_id)["polls"] == polls


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"poll_interval": 0}, ["poll_interval", "greater than or equal to 0.001"]),
        ({"poll_interval": -1.0}, ["poll_interval"]),
        ({"include": "q*"}, ["include", "valid array"]),  # arguments are validated as JSON
        ({"exclude": [3]}, ["exclude", "valid string"]),
        ({"include": [""]}, ["include", "at least 1 character"]),
        ({"source": "labview"}, ["source", "'simulated' or 'qcodes'"]),
        ({"tolerance": -0.1}, ["tolerance", "greater than or equal to 0"]),
        ({"tolerances": {"q*": -1}}, ["tolerances", "greater than or equal to 0"]),
        ({"max_polls": 0}, ["max_polls"]),
        ({"heartbeat_s": 0}, ["heartbeat_s"]),
        ({"pol_interval": 1}, ["unknown argument 'pol_interval'"]),
    ],
)
def test_bad_options_are_rejected_naming_the_argument(client: Client, args: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InvalidArgumentsError) as info:
        stream_data(client, **args)
    assert all(w in info.value.message for w in words), info.value.message


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"source": "qcodes", "seed": 1}, "seed and faults are options of source='simulated'"),
        ({"station": "lab"}, "station is an option of source='qcodes'"),
    ],
)
def test_options_of_another_source_are_rejected(client: Client, args: dict[str, Any], words: str) -> None:
    with pytest.raises(ToolError, match=words):
        stream_data(client, **args)


def test_unary_tools(client: Client) -> None:
    listing = client.execute("list_instruments")
    assert [i["name"] for i in listing["instruments"]] == ["thermometer", "dmm", "q0", "q1"]
    dmm = listing["instruments"][1]["parameters"]
    assert [(p["parameter"], p["full_name"], p["unit"]) for p in dmm] == [
        ("voltage", "dmm_voltage", "V"),
        ("mode", "dmm_mode", ""),
        ("range", "dmm_range", "V"),
    ]
    first = direct_series(3, 1)[0]
    for name in ["q0_frequency", "q0.frequency"]:
        r = client.execute("read_parameter", full_name=name, seed=3)
        assert (r["full_name"], r["value"], r["unit"], r["error"]) == ("q0_frequency", *first["q0_frequency"], None)
    with pytest.raises(ToolError, match="unknown parameter 'q0_frequncy' in the simulated source; did you mean q0_"):
        client.execute("read_parameter", full_name="q0_frequncy")
    snap = client.execute("snapshot", seed=3, include=["dmm"])
    assert snap["type"] == "snapshot" and snap["source"]["seed"] == 3
    assert [(r["full_name"], r["value"], r["unit"]) for r in snap["readings"]] == [
        (n, *first[n]) for n in ["dmm_voltage", "dmm_mode", "dmm_range"]
    ]
    with pytest.raises(ToolError, match="simulated source is read-only"):
        client.execute("set_parameter", full_name="dmm_range", value=10.0, source="simulated")


@pytest.mark.skipif(HAVE_QCODES, reason="qcodes is installed here: this checks the error shown without it")
def test_qcodes_source_without_qcodes_says_how_to_install(client: Client) -> None:
    for call in (
        lambda: stream_data(client, source="qcodes"),
        lambda: client.execute("list_instruments", source="qcodes"),
    ):
        with pytest.raises(ToolError) as info:
            call()
        assert info.value.type == "SourceUnavailableError"
        assert "pip install krait[qcodes]" in info.value.message
