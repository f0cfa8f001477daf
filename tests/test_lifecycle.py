"""A worker's life: readiness, a failed start, and the ways it stops: within its grace, whatever its tools
are doing, with the processes its tools started, even when its supervisor is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from python_worker.client import Client
from python_worker.proto import pb

from .support import alive, eventually
from .workers import ROOT, spawn, wait_ready

HOSTILE = "tests.fixtures.hostile:HostileAdapter"
GRACE = 2.0  # the worker's default shutdown grace
MARGIN = 1.5  # what a loaded 2-core machine may add to it; a bound on "within the grace", not a speed target


@pytest.fixture
def hostile() -> Iterator[tuple[subprocess.Popen[bytes], Client]]:
    """A hostile worker under a "supervisor" (this test: its stdin is a pipe), and a client of it."""
    process = spawn(HOSTILE)
    try:
        info = wait_ready(process)
        with Client(f"127.0.0.1:{info['port']}", timeout=60) as client:
            yield process, client
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def _deaf_call(client: Client, seconds: float = 30) -> grpc.Call:
    """Start sleep_deaf(seconds) and return once the worker has begun running it."""
    # called as a server stream (the same bytes on the wire): grpcio's unary calls show the response headers
    # only with the response, a stream as soon as they arrive, and the worker sends them just before the tool runs
    call = client._channel.unary_stream(
        "/krait.v1.ToolWorker/ExecuteTool",
        request_serializer=pb.ExecuteToolRequest.SerializeToString,
        response_deserializer=pb.ExecuteToolResponse.FromString,
    )(
        pb.ExecuteToolRequest(tool_name="sleep_deaf", args_json=json.dumps({"seconds": seconds})),
        timeout=60,
        metadata=client._auth,  # the token, as the client sends it
    )
    call.initial_metadata()
    return call


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> int:
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker was still running {seconds} s after it was told to stop") from None


def _gone(*pids: int) -> None:
    eventually(lambda: not any(alive(p) for p in pids), timeout=MARGIN, what=f"processes {pids} ending")


def test_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = spawn("adapters.showcase:ShowcaseAdapter", "--ready-file", str(ready), "--worker-id", "w-ready")
    try:
        announced = wait_ready(process)
        assert json.loads(ready.read_text()) == announced
        assert announced["worker_id"] == "w-ready" and announced["pid"] == process.pid and announced["port"] > 0
    finally:
        process.kill()
        process.wait(5)


def test_sigterm_with_a_stream_in_flight_exits_cleanly(hostile) -> None:
    process, client = hostile
    stream = client.execute_stream("wait", seconds=60)
    next(stream)
    process.send_signal(signal.SIGTERM)
    assert _exited_within(process, GRACE + MARGIN) == 0


def test_a_supervised_worker_leads_its_own_process_group(hostile) -> None:
    process, client = hostile
    assert os.getpgid(process.pid) == process.pid != os.getpgrp()
    child = client.execute("spawn_child", seconds=60)
    assert os.getpgid(child) == process.pid  # so `kill -TERM -- -PID` reaches what the tools start


def test_process_group_off_stays_in_the_parents_group() -> None:
    process = spawn(HOSTILE, "--process-group", "off")
    try:
        wait_ready(process)
        assert os.getpgid(process.pid) == os.getpgrp()
    finally:
        process.kill()
        process.wait(5)


def test_stdin_closing_stops_a_worker_blocked_in_a_deaf_tool_within_its_grace(hostile) -> None:
    process, client = hostile
    call = _deaf_call(client)
    child = client.execute("spawn_child", seconds=60)
    assert process.stdin is not None
    process.stdin.close()  # what a dying supervisor's pipe does
    assert _exited_within(process, GRACE + MARGIN) == 0
    _gone(child)
    with pytest.raises(grpc.RpcError) as info:
        next(call)  # the caller learns that the call ended
    assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_sigterm_stops_a_deaf_tool_and_the_tools_children_and_grandchildren() -> None:
    process = spawn(HOSTILE, "--grace", "1")
    try:
        info = wait_ready(process)
        with Client(f"127.0.0.1:{info['port']}", timeout=60) as client:
            _in_flight = _deaf_call(client)  # kept: the call stays in flight
            child = client.execute("spawn_child", seconds=60)
            family = client.execute("spawn_grandchild", seconds=60)
            stream = client.execute_stream("spawn_child_and_block", seconds=60)
            streamed = next(stream).data["child_pid"]
            assert all(alive(p) for p in (child, family["child"], family["grandchild"], streamed))
            process.send_signal(signal.SIGTERM)  # the worker alone, not its group
            assert _exited_within(process, 1.0 + MARGIN) == 0
            _gone(child, family["child"], family["grandchild"], streamed)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_the_pools_group_signal_stops_everything(hostile) -> None:
    process, client = hostile
    _in_flight = _deaf_call(client)  # kept: the call stays in flight
    family = client.execute("spawn_grandchild", seconds=60)
    os.killpg(process.pid, signal.SIGTERM)  # what the pool sends: the whole group
    assert _exited_within(process, GRACE + MARGIN) == 0
    _gone(family["child"], family["grandchild"])


SUPERVISOR = """
import subprocess, sys
worker = subprocess.Popen(
    [sys.executable, "-m", "python_worker", "serve", "--adapter", sys.argv[1], "--port", "0"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
)
print(worker.pid, worker.stdout.readline().decode(), flush=True)
import time; time.sleep(120)
"""


def test_nothing_outlives_a_sigkilled_supervisor() -> None:
    # the BEAM's case: its workers' stdin pipes close when it dies, whatever killed it
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, HOSTILE], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert supervisor.stdout is not None
        pid, ready = supervisor.stdout.readline().decode().split(" ", 1)
        worker_pid, port = int(pid), json.loads(ready.removeprefix("KRAIT_READY "))["port"]
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            _in_flight = _deaf_call(client)  # kept: the call stays in flight
            child = client.execute("spawn_child", seconds=60)
            family = client.execute("spawn_grandchild", seconds=60)
            supervisor.kill()
            supervisor.wait(5)
            eventually(
                lambda: not any(alive(p) for p in (worker_pid, child, family["child"], family["grandchild"])),
                timeout=GRACE + MARGIN,
                what="the worker and its tools' processes ending",
            )
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(5)


def _start_failure(adapter: str) -> tuple[int, list[dict]]:
    """Start a worker that cannot load ``adapter``; its exit status and its log records."""
    result = subprocess.run(
        [sys.executable, "-m", "python_worker", "serve", "--adapter", adapter, "--log-format", "json"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        capture_output=True,
        timeout=30,
        text=True,
    )
    lines = result.stderr.splitlines()
    assert all(line.startswith("KRAIT_LOG ") for line in lines), result.stderr  # nothing printed raw
    return result.returncode, [json.loads(line.removeprefix("KRAIT_LOG ")) for line in lines]


@pytest.mark.parametrize(
    ("adapter", "cause"),
    [
        ("adapters.showcase:Nope", "module 'adapters.showcase' has no class 'Nope'"),
        ("krait_no_such_package.adapter:Thing", "No module named 'krait_no_such_package'"),
        ("adapters.showcase", "adapter must be given as module:Class"),
        ("tests.fixtures.broken:NOT_AN_ADAPTER", "is not a subclass of python_worker.BaseAdapter"),
        # a file path instead of a module: the dotted form, and where modules are imported from
        (
            "tests/fixtures/broken.py:SetupFails",
            "name the module as Python imports it, tests.fixtures.broken:SetupFails, from the directory that holds "
            f"it ({ROOT})",
        ),
        ("krait_no_such_package.adapter:Thing", f"(modules are imported from {ROOT})"),
    ],
)
def test_an_adapter_that_cannot_be_found_is_one_error_record_without_traceback(adapter: str, cause: str) -> None:
    code, records = _start_failure(adapter)
    assert code == 1
    errors = [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1 and "exception" not in errors[0]
    assert errors[0]["message"].startswith(f"cannot load adapter {adapter}: ") and cause in errors[0]["message"]


@pytest.mark.parametrize(
    ("adapter", "cause", "frame"),
    [
        (
            "tests.fixtures.broken_import:NeedsAMissingPackage",
            "ModuleNotFoundError: No module named 'krait_test_package_that_is_not_installed'",
            'tests/fixtures/broken_import.py", line',
        ),
        ("tests.fixtures.broken:SetupFails", "RuntimeError: the instrument is not connected", "in setup"),
        (
            "tests.fixtures.needs_extra:Adapter",
            "ModuleNotFoundError: No module named 'scipy' (scipy comes with Krait's 'adapters' extra: "
            "pip install 'krait[adapters]')",
            'tests/fixtures/needs_extra.py", line',
        ),
    ],
)
def test_an_adapter_failing_in_its_own_code_is_one_error_record_with_its_traceback(
    adapter: str, cause: str, frame: str
) -> None:
    code, records = _start_failure(adapter)
    assert code == 1
    errors = [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1
    assert errors[0]["message"] == f"adapter {adapter} failed to load: {cause}"
    assert errors[0]["exception"].startswith("Traceback (most recent call last):") and frame in errors[0]["exception"]


def test_a_port_in_use_is_one_error_record_and_a_failed_start() -> None:
    process = spawn("adapters.showcase:ShowcaseAdapter")
    try:
        port = wait_ready(process)["port"]
        result = subprocess.run(
            [sys.executable, "-m", "python_worker", "serve", "--adapter", HOSTILE, "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            capture_output=True,
            timeout=30,
            text=True,
        )
        assert result.returncode == 1, result.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    finally:
        process.kill()
        process.wait(5)
