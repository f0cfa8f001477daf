"""The worker's services: health, reflection, Ping, ListTools and sessions."""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from python_worker.client import Client

from .support import insecure_channel


def test_health_service_reports_serving(worker) -> None:
    with grpc.insecure_channel(worker.target) as channel:  # no token: probes carry none
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "krait.v1.ToolWorker"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(worker) -> None:
    with insecure_channel(worker.target) as channel:  # behind the token
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
