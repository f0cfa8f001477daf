"""The worker process: readiness, health, reflection, ListTools, sessions, and the ways it stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from python_worker.client import Client

from .workers import ROOT, running_worker, spawn, wait_ready


def test_health_service_reports_serving(worker) -> None:
    with grpc.insecure_channel(worker.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "krait.v1.ToolWorker"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(worker) -> None:
    with grpc.insecure_channel(worker.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"krait.v1.ToolWorker", "grpc.health.v1.Health"} <= names


def test_ping(client: Client, worker) -> None:
    pong = client.ping("hello")
    assert (pong.message, pong.worker_id, pong.adapter) == ("hello", "test-worker", "adapters.showcase:ShowcaseAdapter")
    assert pong.pid == worker.process.pid


def test_list_tools_schema(client: Client) -> None:
    tools = {t.name: t for t in client.list_tools()}
    assert tools["stream_progress"].supports_streaming and not tools["add"].supports_streaming
    assert tools["stream_progress"].description == "Stream progress updates"
    schema = json.loads(tools["stream_progress"].parameters_schema_json)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["steps"] == {"default": 10, "title": "Steps", "type": "integer"}
    assert "ctx" not in schema["properties"]  # the context is not an argument
    add = json.loads(tools["add"].parameters_schema_json)
    assert add["required"] == ["a", "b"] and add["properties"]["a"]["type"] == "number"
    greet = json.loads(tools["greet"].parameters_schema_json)
    assert greet["properties"]["greeting"]["default"] == "Hello"
    assert greet["properties"]["punctuation"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
    stats = json.loads(tools["array_stats"].parameters_schema_json)["properties"]["values"]
    assert stats["x-krait-binary"] is True and stats["contentMediaType"] == "application/x-npy"


def test_sessions_keep_state_per_session(client: Client) -> None:
    a, b = client.session("session-a"), client.session("session-b")
    assert [a.execute("session_counter")["count"] for _ in range(3)] == [1, 2, 3]
    assert b.execute("session_counter")["count"] == 1
    assert client.cleanup_session("session-a") is True
    assert client.cleanup_session("session-a") is False
    assert a.execute("session_counter")["count"] == 1  # state went with the cleanup
    assert client.initialize_session("session-c") is True
    assert client.initialize_session("session-c") is False


def test_ready_file_and_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = spawn("adapters.showcase:ShowcaseAdapter", "--ready-file", str(ready), "--worker-id", "w-ready")
    try:
        announced = wait_ready(process)
        assert json.loads(ready.read_text()) == announced
        assert announced["worker_id"] == "w-ready" and announced["pid"] == process.pid and announced["port"] > 0
        with Client(f"127.0.0.1:{announced['port']}") as client:
            stream = client.execute_stream("endless_stream", interval_ms=50)
            next(stream)
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0  # clean exit, even with a stream in flight
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_worker_exits_when_its_stdin_closes() -> None:
    process = spawn("adapters.showcase:ShowcaseAdapter")
    try:
        wait_ready(process)
        assert process.stdin is not None
        process.stdin.close()  # what a dying supervisor's pipe does
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_orphaned_worker_exits_when_its_parent_is_killed() -> None:
    # a supervisor process that starts a worker and is then SIGKILLed: the worker must not outlive it
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys\n"
                "p = subprocess.Popen([sys.executable, '-m', 'python_worker', 'serve', '--adapter',"
                " 'adapters.showcase:ShowcaseAdapter', '--port', '0'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
                "print(p.pid, p.stdout.readline().decode(), flush=True)\n"
                "import time; time.sleep(60)\n"
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert supervisor.stdout is not None
    line = supervisor.stdout.readline().decode()
    worker_pid = int(line.split()[0])
    assert "KRAIT_READY" in line
    supervisor.kill()
    supervisor.wait(5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker_pid}").exists():
        status = Path(f"/proc/{worker_pid}/status").read_text() if Path(f"/proc/{worker_pid}").exists() else ""
        if "State:\tZ" in status:
            break  # exited; only waiting for init to reap it
        time.sleep(0.05)
    alive = (
        Path(f"/proc/{worker_pid}/status").exists()
        and "State:\tZ" not in Path(f"/proc/{worker_pid}/status").read_text()
    )
    assert not alive, "the worker outlived its supervisor"


def test_bad_adapter_path_fails_clearly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "python_worker", "serve", "--adapter", "adapters.showcase:Nope"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"module 'adapters.showcase' has no class 'Nope'" in result.stderr


def test_cli_call_and_tools() -> None:
    with running_worker() as worker:
        run = [sys.executable, "-m", "python_worker"]
        out = subprocess.run(
            [*run, "call", "stream_progress", "--target", worker.target, "--args", '{"steps": 3}', "--stream"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            check=True,
            text=True,
        ).stdout.splitlines()
        assert out[0] == '[0] {"step": 1, "total": 3, "progress": 33.33333333333333}'
        assert out[3].startswith("[3 final] null") and '"synthetic_final": "true"' in out[3]
        tools = subprocess.run(
            [*run, "tools", "--target", worker.target], cwd=ROOT, capture_output=True, timeout=30, check=True, text=True
        ).stdout
        assert "stream  stream_progress(steps: integer = 10, delay_ms: number = 0.0)  Stream progress updates" in tools
        failed = subprocess.run(
            [*run, "call", "add", "--target", worker.target, "--args", '{"a": 1}'],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            text=True,
        )
        assert failed.returncode == 1
        assert "error (INVALID_ARGUMENT): ArgumentError: add: missing required argument 'b'" in failed.stderr


def test_too_many_concurrent_calls_are_refused_not_queued() -> None:
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", "--max-calls", "2") as worker,
        Client(worker.target, timeout=20) as client,
    ):
        streams = [client.execute_stream("endless_stream", interval_ms=50) for _ in range(2)]
        for s in streams:
            next(s)
        try:
            try:
                client.execute("add", a=1, b=2)
                raise AssertionError("a third call should be refused")
            except Exception as exc:
                assert getattr(exc, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.ping().worker_id  # health and pings are still served
        finally:
            for s in streams:
                s.close()
        time.sleep(0.2)
        assert client.execute("add", a=1, b=2) == 3  # slots come back
