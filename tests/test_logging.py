"""The worker's log: ``--log-format json`` records (one line each, with the call they belong to) and text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from python_worker.client import Client, KraitError
from python_worker.proto import pb, pb_grpc

from .support import eventually, insecure_channel
from .workers import Worker, running_worker

HOSTILE = "tests.fixtures.hostile:HostileAdapter"


@pytest.fixture(scope="module")
def json_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Path]]:
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    with (
        log.open("wb") as sink,
        running_worker(HOSTILE, "--log-format", "json", "--worker-id", "w-json", stderr=sink) as worker,
    ):
        yield worker, log


def records(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    assert all(line.startswith("KRAIT_LOG ") for line in lines), [x for x in lines if not x.startswith("KRAIT_LOG")]
    return [json.loads(line.removeprefix("KRAIT_LOG ")) for line in lines]


def record(log: Path, **match: str) -> dict[str, Any]:
    """The first record holding every ``key=value`` of ``match`` (``message`` as a substring), waited for."""

    def find() -> dict[str, Any]:
        for r in records(log):
            if all((v in r.get(k, "")) if k == "message" else r.get(k) == v for k, v in match.items()):
                return r
        raise AssertionError(f"no record with {match}")

    return eventually(find)


def test_records_outside_calls_carry_the_worker_id_only(json_worker) -> None:
    _, log = json_worker
    serving = record(log, message="serving tests.fixtures.hostile:HostileAdapter on 127.0.0.1:")
    assert serving == {"level": "INFO", "logger": "krait.worker", "message": serving["message"], "worker_id": "w-json"}


def test_a_tools_records_carry_its_call_and_a_traceback_is_one_record(json_worker) -> None:
    worker, log = json_worker
    with insecure_channel(worker.target) as channel:
        request = pb.ExecuteToolRequest(tool_name="log_records", args_json='{"message": "m1"}', session_id="s-1")
        pb_grpc.ToolWorkerStub(channel).ExecuteTool(request, metadata=[("krait-call-id", "call-42")], timeout=10)
    warning = record(log, message="warning: m1")
    assert warning == {
        "level": "WARNING",
        "logger": "tests.hostile",
        "message": "warning: m1",
        "worker_id": "w-json",
        "tool": "log_records",
        "session_id": "s-1",
        "call_id": "call-42",
    }
    error = record(log, message="error with traceback: m1")
    assert (error["level"], error["call_id"], error["tool"]) == ("ERROR", "call-42", "log_records")
    assert error["exception"].startswith("Traceback (most recent call last):")
    assert error["exception"].rstrip().endswith("RuntimeError: m1")
    assert "\n" not in error["message"]


def test_a_streaming_tools_own_thread_logs_as_part_of_its_call(json_worker) -> None:
    worker, log = json_worker
    with Client(worker.target, timeout=10) as client:
        chunks = list(client.execute_stream("log_from_stream", message="from-thread"))
    call_id = chunks[0].data  # made by the worker: the call sent none, and the tool saw it as ctx.call_id
    assert len(call_id) == 16
    found = record(log, message="stream warning: from-thread")
    assert (found["tool"], found["session_id"], found["call_id"]) == ("log_from_stream", "", call_id)


def test_call_ids_are_clipped_and_refusals_carry_them(json_worker) -> None:
    worker, log = json_worker
    long_id = "c" * 100
    with insecure_channel(worker.target) as channel:
        stub = pb_grpc.ToolWorkerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ExecuteTool(pb.ExecuteToolRequest(tool_name="nope"), metadata=[("krait-call-id", long_id)], timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        call = stub.ExecuteStreamingTool(
            pb.ExecuteToolRequest(tool_name="wait", args_json='{"seconds": 0}'),
            metadata=[("krait-call-id", " spaced id ")],
            timeout=10,
        )
        first = json.loads(next(call).data)
    refused = record(log, message="ExecuteTool nope refused: NOT_FOUND")
    assert (refused["level"], refused["call_id"], refused["tool"]) == ("WARNING", "c" * 64, "nope")
    assert "exception" not in refused
    assert first["call_id"] == "spaced id"


def test_text_format_names_the_worker_once_and_the_call(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as sink, running_worker(HOSTILE, "--worker-id", "w-text", stderr=sink) as worker:
        with insecure_channel(worker.target) as channel:
            request = pb.ExecuteToolRequest(tool_name="log_records", args_json='{"message": "t1"}')
            pb_grpc.ToolWorkerStub(channel).ExecuteTool(request, metadata=[("krait-call-id", "call-t")], timeout=10)
        lines = eventually(lambda: [x for x in log.read_text().splitlines() if "warning: t1" in x] and log.read_text())
    serving = next(line for line in lines.splitlines() if "serving" in line)
    assert serving.count("w-text") == 1 and " INFO [w-text] krait.worker: serving " in serving
    assert " WARNING [w-text log_records call=call-t] tests.hostile: warning: t1" in lines


def test_a_tools_exception_is_one_error_line_and_its_traceback_without_krait_frames_is_at_debug(
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    args = ("--log-format", "json", "--log-level", "debug", "--worker-id", "w-debug")
    with log.open("wb") as sink, running_worker(HOSTILE, *args, stderr=sink) as worker:
        with Client(worker.target, timeout=10) as client, pytest.raises(KraitError) as info:
            client.execute("fails", message="the instrument is not connected")
        assert "ValueError: the instrument is not connected" in info.value.traceback  # the caller has it whole
        failed = record(log, message="ExecuteTool fails failed")
        assert failed["level"] == "ERROR" and "exception" not in failed
        assert failed["message"] == "ExecuteTool fails failed: ValueError: the instrument is not connected"
        trace = record(log, message="ExecuteTool fails: the tool's traceback:")
        assert trace["level"] == "DEBUG" and trace["tool"] == "fails"
        assert 'tests/fixtures/hostile.py", line' in trace["message"] and "in fails" in trace["message"]
        assert "python_worker/" not in trace["message"]  # Krait's own frames never
        assert trace["message"].rstrip().endswith("ValueError: the instrument is not connected")
    # at the default level (info) the failure is that one line
    assert sum("fails" in r.get("message", "") for r in records(log) if r["level"] != "DEBUG") == 1
