"""adapters.dashboard: one real worker serving the showcase, ML, audio and instrument tools together, each
adapter's state set up once and working (the composite the live page's demo runs)."""

from __future__ import annotations

import pytest

from adapters.audio import AudioAdapter
from adapters.dashboard import DashboardAdapter
from adapters.instrument import InstrumentAdapter
from adapters.ml import MLAdapter
from adapters.showcase import ShowcaseAdapter
from python_worker.client import Client

from ..workers import running_worker

PARTS = (ShowcaseAdapter, MLAdapter, AudioAdapter, InstrumentAdapter)


def test_the_parts_tool_names_do_not_overlap_and_all_are_served() -> None:
    names = [name for part in PARTS for name in part.tool_specs()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(DashboardAdapter.tool_specs()) == set(names)


def test_each_parts_init_runs_once_and_no_attribute_is_shared() -> None:
    attributes = [set(vars(part())) for part in PARTS]
    assert all(not (a & b) for i, a in enumerate(attributes) for b in attributes[i + 1 :])
    adapter = DashboardAdapter()
    assert set(vars(adapter)) == set().union(*attributes)


@pytest.mark.timeout(90)
def test_one_worker_runs_progress_training_spectrum_and_monitor() -> None:
    with running_worker("adapters.dashboard:DashboardAdapter") as worker, Client(worker.target, timeout=60) as client:
        listed = {tool.name for tool in client.list_tools()}
        assert {"stream_progress", "train_model", "stream_spectrum", "monitor"} <= listed

        progress = [c.data for c in client.execute_stream("stream_progress", steps=4)]
        assert [p["progress"] for p in progress[:-1]] == [25.0, 50.0, 75.0, 100.0] and progress[-1] is None

        session = client.session("dash-session")
        training = [c.data for c in session.execute_stream("train_model", epochs=2, hidden=8)]
        assert [c["type"] for c in training] == ["progress", "progress", "complete"]
        assert session.execute("list_models")["models"][0]["model_id"] == training[-1]["model_id"]

        args = {"signal": {"frequency_hz": 1000.0}, "max_chunks": 2, "realtime": False}
        spectra = [c.data for c in client.execute_stream("stream_spectrum", **args) if not c.is_final]
        assert [s["peak_frequency_hz"] for s in spectra] == pytest.approx([1000.0, 1000.0], abs=1.0)
        assert client.execute("active_streams")["closed"][-1]["outcome"] == "finished"

        updates = [c.data for c in client.execute_stream("monitor", poll_interval=0.01, max_polls=3, seed=1)]
        assert updates[0]["type"] == "snapshot" and (updates[-1]["type"], updates[-1]["polls"]) == ("end", 3)

        assert client.execute("stream_events", tag="none") == {}  # the showcase's own state is there too
