"""The instrument monitor on real QCoDeS instruments (DummyInstrument & co.) in a real worker: station files by
name from the worker's station directory, sets heard through QCoDeS' on-set callback (transient ones too),
instruments and parameters added after a monitor started, an instrument without ``*IDN?``, recent changes.

QCoDeS is an optional extra: these tests skip where it is not importable (scripts/test installs it).
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.instrument.recent import RecentChanges
from adapters.instrument.sources.qcodes_sets import SetEvent, Subscription
from python_worker.client import Client, KraitError

from ..workers import running_worker

ADAPTER = "adapters.instrument:InstrumentAdapter"
LAB_ADAPTER = "tests.adapters.lab_adapter:LabAdapter"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("qcodes") is None, reason="qcodes is not installed (optional: pip install krait[qcodes])"
)

STATION = textwrap.dedent(
    """
    instruments:
      dac:
        type: qcodes.instrument_drivers.mock_instruments.DummyInstrument
        init:
          gates: [ch1, ch2]
      parabola:
        type: qcodes.instrument_drivers.mock_instruments.MockParabola
        parameters:
          noise: {initial_value: 0.1}
      lab:
        type: qcodes.instrument_drivers.mock_instruments.DummyChannelInstrument
      bare:
        type: qcodes.instrument.Instrument
    """
)
# a station file outside the station directory: its instrument must never be created
OUTSIDE = textwrap.dedent(
    """
    instruments:
      intruder:
        type: qcodes.instrument_drivers.mock_instruments.DummyInstrument
    """
)


@pytest.fixture(scope="module")
def stations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qcodes")
    directory = root / "stations"
    directory.mkdir()
    (directory / "lab.yaml").write_text(STATION)
    (root / "outside.yaml").write_text(OUTSIDE)
    os.symlink(root / "outside.yaml", directory / "sneaky.yaml")
    return directory


@pytest.fixture(scope="module")
def worker_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "worker.log"


@pytest.fixture(scope="module")
def client(stations: Path, worker_log: Path) -> Iterator[Client]:
    with (
        worker_log.open("wb") as log,
        running_worker(ADAPTER, env={**os.environ, "KRAIT_STATION_DIR": str(stations)}, stderr=log) as worker,
        Client(worker.target, timeout=30) as c,
    ):
        yield c


def stream_data(client: Client, **args: Any) -> list[dict[str, Any]]:
    return [chunk.data for chunk in client.execute_stream("monitor", **args)]


def wait_finished(client: Client, monitor_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.execute("active_monitors")
        for record in status["finished"]:
            if record["monitor_id"] == monitor_id:
                return {**record, "active": status["active"]}
        time.sleep(0.01)
    raise AssertionError(f"monitor {monitor_id!r} did not finish: {status}")


# -- station files: by name, from the worker's directory only --------------------------------------------------------
def test_stations_are_listed_and_chosen_by_name(client: Client, stations: Path) -> None:
    assert client.execute("list_stations") == {"directory": str(stations.resolve()), "stations": ["lab"]}  # not sneaky
    listing = client.execute("list_instruments", source="qcodes", station="lab")
    assert listing["source"] == {"kind": "qcodes", "station": "lab", "read_mode": "get"}
    by_name = {i["name"]: {p["full_name"]: p for p in i["parameters"]} for i in listing["instruments"]}
    assert set(by_name) == {"dac", "parabola", "lab", "bare"}
    assert by_name["dac"]["dac_ch1"]["unit"] == "V" and by_name["dac"]["dac_ch1"]["parameter"] == "ch1"
    channel = by_name["lab"]["lab_ChanA_temperature"]  # a channel's parameter belongs to the root instrument
    assert (channel["parameter"], channel["unit"]) == ("ChanA_temperature", "K")
    assert client.execute("list_instruments", source="qcodes", station="lab.yaml")["source"]["station"] == "lab.yaml"


@pytest.mark.parametrize(
    "station", ["/etc/passwd", "../outside", "../outside.yaml", "sub/lab", ".hidden", "sneaky", "sneaky.yaml"]
)
def test_paths_and_files_outside_the_station_directory_are_refused(client: Client, stations: Path, station: str):
    for call in (
        lambda: client.execute("list_instruments", source="qcodes", station=station),
        lambda: stream_data(client, source="qcodes", station=station, max_polls=1),
        lambda: client.execute("set_parameter", full_name="intruder_dac", value=1, station=station),
    ):
        with pytest.raises(KraitError) as info:
            call()
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, info.value.message
        assert info.value.type == "StationNotAllowed"
        assert "station directory" in info.value.message
    listing = client.execute("list_instruments", source="qcodes", station="lab")
    assert "intruder" not in {i["name"] for i in listing["instruments"]}  # nothing of the outside file was loaded


def test_unknown_station_lists_the_known_ones(client: Client) -> None:
    with pytest.raises(KraitError) as info:
        client.execute("list_instruments", source="qcodes", station="cryo")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.type == "StationNotFound"
    assert "no station 'cryo'" in info.value.message and "stations: lab" in info.value.message


def test_a_worker_without_a_station_directory_allows_no_station_file() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KRAIT_STATION_DIR"}
    with running_worker(ADAPTER, env=env) as worker, Client(worker.target, timeout=30) as client:
        assert client.execute("list_stations") == {"directory": None, "stations": []}
        with pytest.raises(KraitError) as info:
            client.execute("list_instruments", source="qcodes", station="lab")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "KRAIT_STATION_DIR" in info.value.message


# -- sets and changes ----------------------------------------------------------------------------------------------
def test_monitor_reports_a_parameter_set_meanwhile(client: Client) -> None:
    args = {"source": "qcodes", "station": "lab", "include": ["dac"], "poll_interval": 0.05}
    stream = client.stream("monitor", {**args, "monitor_id": "qcodes-set"})
    try:
        snapshot = next(stream).data
        assert [(r["full_name"], r["value"], r["unit"]) for r in snapshot["readings"]] == [
            ("dac_IDN", snapshot["readings"][0]["value"], ""),
            ("dac_ch1", 0, "V"),
            ("dac_ch2", 0, "V"),
            ("dac_fixed_parameter", 5, ""),
        ]
        after = client.execute("set_parameter", full_name="dac.ch1", value=1.5, station="lab")
        assert (after["full_name"], after["value"], after["unit"]) == ("dac_ch1", 1.5, "V")
        delta = next(stream).data
        assert delta["type"] == "delta"
        assert [(c["reading"]["full_name"], c["reading"]["value"], c["changed_fields"]) for c in delta["changes"]] == [
            ("dac_ch1", 1.5, ["value"])
        ]
        assert delta["changes"][0]["previous"]["value"] == 0
        assert [(s["full_name"], s["value"], s["unit"]) for s in delta["sets"]] == [("dac_ch1", 1.5, "V")]
    finally:
        stream.close()
        client.execute("set_parameter", full_name="dac_ch1", value=0, station="lab")
    record = wait_finished(client, "qcodes-set")
    assert record["reason"] == "cancelled" and record["source_closed"] and record["active"] == 0


def test_a_set_undone_within_one_poll_is_still_seen_in_order(client: Client) -> None:
    """Two sets between two polls (1.5 V, then back to 0 V): polling sees no change; the on-set hook saw both."""
    args = {"source": "qcodes", "station": "lab", "include": ["dac.ch*"], "poll_interval": 0.5, "read_mode": "cache"}
    stream = client.stream("monitor", {**args, "monitor_id": "transient"})
    try:
        assert next(stream).data["type"] == "snapshot"
        for value in (1.5, 0.0):
            client.execute("set_parameter", full_name="dac.ch2", value=value, station="lab")
        delta = next(stream).data
    finally:
        stream.close()
    assert delta["changes"] == [] and delta["added"] == [] and delta["removed"] == []
    assert [(s["full_name"], s["value"]) for s in delta["sets"]] == [("dac_ch2", 1.5), ("dac_ch2", 0.0)]
    assert delta["sets"][0]["seq"] < delta["sets"][1]["seq"] and delta["sets"][0]["ts"] <= delta["sets"][1]["ts"]
    recent = client.execute("recent_changes", include=["dac.ch2"], limit=2)
    assert [(c["kind"], c["value"]) for c in recent["changes"]] == [("set", 1.5), ("set", 0.0)]
    assert recent["changes"][0]["seq"] < recent["changes"][1]["seq"] == recent["last_seq"]


def test_get_mode_reads_the_instrument_each_poll_and_changes_are_recorded(client: Client) -> None:
    chunks = stream_data(
        client, source="qcodes", station="lab", include=["parabola.parabola"], max_polls=5, poll_interval=0.01,
        monitor_id="parabola",
    )  # fmt: skip
    # MockParabola adds fresh noise to every get: every poll reads a new value
    assert [c["type"] for c in chunks] == ["snapshot", "delta", "delta", "delta", "delta", "end"]
    recent = client.execute("recent_changes", include=["parabola"], limit=4)
    values = [c["changes"][0]["reading"]["value"] for c in chunks[1:5]]
    assert [(c["kind"], c["monitor_id"], c["value"]) for c in recent["changes"]] == [
        ("poll", "parabola", v) for v in values
    ]
    cached = stream_data(
        client, source="qcodes", station="lab", include=["parabola.parabola"], max_polls=5, poll_interval=0.01,
        read_mode="cache",
    )  # fmt: skip
    assert [c["type"] for c in cached] == ["snapshot", "end"]  # the cache only changes when someone gets or sets


def test_an_instrument_without_idn_is_an_error_reading_once_and_quiet(client: Client, worker_log: Path) -> None:
    chunks = stream_data(client, source="qcodes", station="lab", include=["bare"], max_polls=6, poll_interval=0.01)
    idn = chunks[0]["readings"][0]
    assert idn["full_name"] == "bare_IDN" and idn["value"] is None
    assert idn["error"].startswith("InstrumentIdentityError: no answer to *IDN? (NotImplementedError:")
    assert [c["type"] for c in chunks] == ["snapshot", "end"]  # still failing the same way: nothing new to report
    log = worker_log.read_text(errors="replace")
    assert "IDN" not in log and "Traceback" not in log  # QCoDeS' warning with its traceback stayed off the log


# -- instruments and parameters that come later ----------------------------------------------------------------
@pytest.fixture(scope="module")
def lab() -> Iterator[Client]:
    with running_worker(LAB_ADAPTER) as worker, Client(worker.target, timeout=30) as c:
        yield c


def test_instruments_and_parameters_added_later_are_discovered(lab: Client) -> None:
    stream = lab.stream("monitor", {"source": "qcodes", "poll_interval": 0.05, "exclude": ["*IDN"]})
    try:
        snapshot = next(stream).data
        assert [r["full_name"] for r in snapshot["readings"]] == ["dac_ch1", "dac_fixed_parameter"]
        assert lab.execute("add_instrument", name="late", gates=["g1"]) == ["IDN", "g1", "fixed_parameter"]
        delta = next(stream).data
        assert [(r["full_name"], r["value"], r["unit"]) for r in delta["added"]] == [
            ("late_g1", 0, "V"),
            ("late_fixed_parameter", 5, ""),
        ]
        assert delta["changes"] == [] and delta["removed"] == []
        lab.execute("add_parameter", instrument="dac", name="bias", value=0.25)
        delta = next(stream).data
        assert [(r["full_name"], r["value"], r["unit"]) for r in delta["added"]] == [("dac_bias", 0.25, "V")]
        lab.execute("set_parameter", full_name="late_g1", value=2.0)
        delta = next(stream).data  # the new instrument is monitored like the others
        assert [(c["reading"]["full_name"], c["reading"]["value"]) for c in delta["changes"]] == [("late_g1", 2.0)]
        assert [(s["full_name"], s["value"]) for s in delta["sets"]] == [("late_g1", 2.0)]
        lab.execute("remove_instrument", name="late")
        delta = next(stream).data
        assert delta["removed"] == ["late_g1", "late_fixed_parameter"]
        assert delta["added"] == [] and delta["changes"] == []
    finally:
        stream.close()


# -- the bookkeeping, as units --------------------------------------------------------------------------------------
def _event(seq: int, value: float) -> SetEvent:
    return SetEvent(seq, float(seq), "dac", "ch1", "dac_ch1", value, "V")


def test_recent_changes_page_and_count_what_left_the_buffer() -> None:
    recent = RecentChanges(capacity=5)
    for i in range(1, 9):
        recent.add_set(_event(i, float(i)))
    newest = recent.recent(limit=3)
    assert [c["value"] for c in newest["changes"]] == [6.0, 7.0, 8.0] and newest["last_seq"] == 8
    page = recent.recent(limit=2, since_seq=1)
    assert [c["seq"] for c in page["changes"]] == [4, 5] and page["more"] and page["missed"] == 2  # 2 and 3 are gone
    rest = recent.recent(limit=10, since_seq=5)
    assert [c["seq"] for c in rest["changes"]] == [6, 7, 8] and not rest["more"] and rest["missed"] == 0
    assert recent.recent(limit=5, exclude=["dac"])["changes"] == []


def test_a_subscription_counts_the_sets_it_had_no_room_for() -> None:
    subscription = Subscription()
    for i in range(Subscription.LIMIT + 3):
        subscription.push(_event(i, 0.0))
    events, dropped = subscription.drain()
    assert len(events) == Subscription.LIMIT and dropped == 3 and events[0].seq == 3
    assert subscription.drain() == ([], 0)
