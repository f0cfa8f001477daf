"""OpenTelemetry spans in a real worker (the SDK's in-memory exporter, installed by the test adapter): a call
with a known ``traceparent`` header is a child span of it; a stream's span ends with the stream, cancelled too;
a failure sets the span's status and records the exception."""

from __future__ import annotations

import json
import secrets
from typing import Any

import grpc
import pytest

from python_worker import codec
from python_worker.client import Client, build_request
from python_worker.proto import pb_grpc

from .support import eventually, insecure_channel
from .workers import running_worker

TRACED = "tests.fixtures.traced:TracedAdapter"


def traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def spans(client: Client, name: str) -> list[dict[str, Any]]:
    return [s for s in client.execute("spans") if s["name"] == name]


@pytest.fixture(scope="module")
def worker():
    with running_worker(TRACED) as w:
        yield w


@pytest.fixture
def client(worker):
    with Client(worker.target) as c:
        yield c


@pytest.fixture
def stub(worker):
    channel = insecure_channel(worker.target)
    yield pb_grpc.ToolWorkerStub(channel)  # type: ignore[no-untyped-call]
    channel.close()


def test_a_unary_call_is_a_child_of_the_callers_span(client: Client, stub: Any) -> None:
    header, trace_id, parent_id = traceparent()
    headers = [("traceparent", header), ("tracestate", "vendor=x")]
    response = stub.ExecuteTool(build_request("work", {}, "", None), metadata=headers, timeout=10)
    # the call's trace id goes back in the response metadata, and the tool saw it as ctx.trace_id
    assert response.metadata["trace_id"] == trace_id
    assert codec.decode_value(response.data, response.content_type) == trace_id

    [span] = [s for s in spans(client, "krait.tool work") if s["trace_id"] == trace_id]
    assert span["parent_id"] == parent_id
    assert span["kind"] == "SERVER"
    assert span["status"] == "UNSET"
    assert span["attributes"]["krait.tool"] == "work"
    assert span["attributes"]["rpc.grpc.status_code"] == "OK"
    assert span["attributes"]["krait.worker_id"]
    assert span["events"] == [{"name": "working", "attributes": {"step": 1}}]
    # the tool's own span is the call span's child
    [inner] = [s for s in spans(client, "inner") if s["trace_id"] == trace_id]
    assert inner["parent_id"] == span["span_id"]


def test_a_call_without_trace_context_starts_a_trace(client: Client) -> None:
    response = client.call_raw("work", {})
    [span] = [s for s in spans(client, "krait.tool work") if s["trace_id"] == response.metadata["trace_id"]]
    assert span["parent_id"] is None


def test_a_streams_span_ends_with_the_stream(client: Client, stub: Any) -> None:
    header, trace_id, parent_id = traceparent()
    chunks = list(
        stub.ExecuteStreamingTool(
            build_request("ticks", {"count": 3}, "", None), metadata=[("traceparent", header)], timeout=10
        )
    )
    assert chunks[-1].metadata["trace_id"] == trace_id
    [span] = [s for s in spans(client, "krait.tool ticks") if s["trace_id"] == trace_id]
    assert span["parent_id"] == parent_id
    assert span["attributes"]["krait.chunks"] == 4  # 3 ticks and the final chunk
    assert span["attributes"]["rpc.grpc.status_code"] == "OK"
    # the generator ran with the call's span current
    [loop] = [s for s in spans(client, "tick-loop") if s["trace_id"] == trace_id]
    assert loop["parent_id"] == span["span_id"]


def test_async_tools_run_with_the_call_span_current(client: Client, stub: Any) -> None:
    header, trace_id, _ = traceparent()
    response = stub.ExecuteTool(build_request("async_work", {}, "", None), metadata=[("traceparent", header)])
    assert response.metadata["trace_id"] == trace_id
    [span] = [s for s in spans(client, "krait.tool async_work") if s["trace_id"] == trace_id]
    [inner] = [s for s in spans(client, "inner-async") if s["trace_id"] == trace_id]
    assert inner["parent_id"] == span["span_id"]

    header, trace_id, _ = traceparent()
    request = build_request("async_ticks", {"count": 2}, "", None)
    assert len(list(stub.ExecuteStreamingTool(request, metadata=[("traceparent", header)], timeout=10))) == 3
    [span] = [s for s in spans(client, "krait.tool async_ticks") if s["trace_id"] == trace_id]
    [loop] = [s for s in spans(client, "tick-loop-async") if s["trace_id"] == trace_id]
    assert loop["parent_id"] == span["span_id"]


def test_a_cancelled_streams_span_ends_cancelled(client: Client, stub: Any) -> None:
    header, trace_id, _ = traceparent()
    request = build_request("ticks", {"count": 1000, "interval_ms": 20}, "", None)
    call = stub.ExecuteStreamingTool(request, metadata=[("traceparent", header)], timeout=30)
    next(call)
    call.cancel()

    def ended() -> dict[str, Any]:
        found = [s for s in spans(client, "krait.tool ticks") if s["trace_id"] == trace_id]
        assert found, "the cancelled stream's span has not ended yet"
        return found[0]

    span = eventually(ended, timeout=10, interval=0.05)
    assert span["status"] == "ERROR"
    assert span["attributes"]["rpc.grpc.status_code"] == "CANCELLED"


def test_an_error_sets_the_status_and_records_the_exception(client: Client, stub: Any) -> None:
    header, trace_id, _ = traceparent()
    with pytest.raises(grpc.RpcError) as info:
        stub.ExecuteTool(build_request("boom", {}, "", None), metadata=[("traceparent", header)], timeout=10)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    [span] = [s for s in spans(client, "krait.tool boom") if s["trace_id"] == trace_id]
    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "ValueError"
    assert span["attributes"]["rpc.grpc.status_code"] == "UNKNOWN"
    [event] = span["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "boom on purpose"


def test_export_asked_for_without_the_exporter_is_a_warning_not_a_failure() -> None:
    import importlib.util
    import subprocess

    from .workers import spawn, wait_ready

    if importlib.util.find_spec("opentelemetry.exporter") is not None:
        pytest.skip("the OTLP exporter is installed here (the otel extra)")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    process = spawn("adapters.showcase:ShowcaseAdapter", env=env, stderr=subprocess.PIPE)
    try:
        info = wait_ready(process)
        with Client(f"127.0.0.1:{info['port']}") as client:
            assert client.execute("echo", value=1) == 1
    finally:
        process.terminate()
        process.wait(10)
    assert process.stderr is not None
    assert b"OpenTelemetry export asked for, but opentelemetry.exporter is missing" in process.stderr.read()


def test_the_calls_log_records_carry_its_trace_id(tmp_path) -> None:
    log = tmp_path / "worker.log"
    header, trace_id, _ = traceparent()
    with log.open("wb") as sink, running_worker(TRACED, "--log-format", "json", stderr=sink) as worker:
        with insecure_channel(worker.target) as channel:
            stub = pb_grpc.ToolWorkerStub(channel)  # type: ignore[no-untyped-call]
            stub.ExecuteTool(build_request("work", {}, "", None), metadata=[("traceparent", header)], timeout=10)

        def logged() -> dict[str, Any]:
            lines = [json.loads(x.removeprefix("KRAIT_LOG ")) for x in log.read_text().splitlines()]
            [record] = [r for r in lines if r["message"] == "working on the call"]
            return record

        record = eventually(logged, timeout=10, interval=0.05)
    assert record["trace_id"] == trace_id and record["tool"] == "work" and record["call_id"]
