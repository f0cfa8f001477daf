"""A worker's resources are bounded: concurrent calls, non-tool streams, sessions (count, id length, idle time)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from python_worker.client import Client, KraitError
from python_worker.transports.grpc.aux_streams import MAX_AUX_STREAMS

from .support import eventually, insecure_channel
from .workers import Worker, running_worker

HOSTILE = "tests.fixtures.hostile:HostileAdapter"


def test_too_many_concurrent_calls_are_refused_not_queued() -> None:
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", "--max-calls", "2") as worker,
        Client(worker.target, timeout=20) as client,
    ):
        streams = [client.execute_stream("endless_stream", interval_ms=50) for _ in range(2)]
        for s in streams:
            next(s)
        try:
            with pytest.raises(KraitError) as info:
                client.execute("add", a=1, b=2)
            assert (info.value.code, info.value.type) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WorkerOverloaded")
            assert client.ping().worker_id  # health and pings are still served
        finally:
            for s in streams:
                s.close()

        def served() -> bool:
            try:
                return client.execute("add", a=1, b=2) == 3
            except KraitError as exc:
                assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED, exc  # not yet: the slots come back async
                return False

        eventually(served, what="the slots coming back")


@pytest.fixture
def hostile() -> Iterator[tuple[Worker, Client]]:
    with running_worker(HOSTILE, "--max-calls", "4") as worker, Client(worker.target, timeout=20) as client:
        yield worker, client


class _Idle:
    """A request iterator that sends nothing until released: an idle client stream."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __iter__(self) -> _Idle:
        return self

    def __next__(self) -> reflection_pb2.ServerReflectionRequest:
        self.release.wait(60)
        raise StopIteration


def test_idle_reflection_and_health_streams_cannot_starve_ping_and_tool_calls(hostile) -> None:
    worker, client = hostile
    idle = _Idle()
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    # health needs no token (probes carry none): anyone can fill its budget, and only its budget
    with grpc.insecure_channel(worker.target) as anonymous, insecure_channel(worker.target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        health = health_pb2_grpc.HealthStub(anonymous)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(20)]
        streams: list[Any] = []
        try:
            eventually(
                lambda: sum(s.done() for s in watches) == len(watches) - MAX_AUX_STREAMS,
                timeout=20,
                what=f"all but {MAX_AUX_STREAMS} health watches refused",
            )
            refused = [s for s in watches if s.done()]
            assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert f"at most {MAX_AUX_STREAMS} health-watch streams" in refused[0].details()
            # health's budget is full: reflection has its own
            answer = next(reflection.ServerReflectionInfo(iter([request]), timeout=2))
            assert answer.list_services_response.service
            # 60: beyond the budget, within one connection's stream cap (past that, the transport refuses streams
            # itself, UNAVAILABLE: a different limit, docs/deploy.md)
            streams = [reflection.ServerReflectionInfo(idle, timeout=60) for _ in range(60)]
            eventually(
                lambda: sum(s.done() for s in streams) == len(streams) - MAX_AUX_STREAMS,
                timeout=20,
                what=f"all but {MAX_AUX_STREAMS} reflection streams refused",
            )
            refused = [s for s in streams if s.done()]
            assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert f"at most {MAX_AUX_STREAMS} reflection streams" in refused[0].details()
            # Ping answers and tools run beside the open streams (2 s: "at once", far from the 50 ms benchmark)
            assert client.ping(timeout=2.0).pid == worker.process.pid
            assert client.call("pid", timeout=2.0) == worker.process.pid
            assert len(list(client.stream("log_from_stream", timeout=2.0))) == 2  # a streaming call too
            check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            assert check.status == health_pb2.HealthCheckResponse.SERVING  # and a health check
        finally:
            for s in [*streams, *watches]:
                s.cancel()
            idle.release.set()

        # cancelled streams give their places back
        def serves_reflection() -> bool:
            try:
                return bool(next(reflection.ServerReflectionInfo(iter([request]), timeout=5)).list_services_response)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error  # not yet
                return False

        eventually(serves_reflection, what="reflection serving again")


@contextlib.contextmanager
def _session_worker(*args: str) -> Iterator[tuple[Worker, Client]]:
    with running_worker(HOSTILE, *args) as worker, Client(worker.target, timeout=20) as client:
        yield worker, client


def test_sessions_beyond_the_cap_evict_the_least_recently_used_idle_one() -> None:
    with _session_worker("--max-sessions", "3") as (_worker, client):
        for session_id in ("a", "b", "c"):
            assert client.initialize_session(session_id)
        client.session("a").execute("pid")  # a is now the most recently used: b is the least
        assert client.initialize_session("d")
        assert client.execute("ended_sessions") == ["b"]  # on_session_end ran for it
        busy = client.session("c").stream("wait", {"seconds": 60})
        next(busy)  # c is in use by a call, so it is not evicted, though older than a and d
        try:
            client.session("e").execute("pid")
            assert client.execute("ended_sessions") == ["b", "a"]
            client.session("f").execute("pid")
            assert client.execute("ended_sessions") == ["b", "a", "d"]
        finally:
            busy.close()
        assert client.cleanup_session("c") is True  # still there


def test_a_new_session_is_refused_when_every_session_is_in_use() -> None:
    with _session_worker("--max-sessions", "1") as (_worker, client):
        busy = client.session("a").stream("wait", {"seconds": 60})
        next(busy)
        try:
            with pytest.raises(KraitError) as info:
                client.session("b").execute("pid")
            assert (info.value.code, info.value.type) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SessionLimit")
        finally:
            busy.close()
        assert client.execute("ended_sessions") == []


def test_idle_sessions_expire_on_a_timer_without_another_call() -> None:
    with _session_worker("--session-ttl", "0.3") as (_worker, client):
        busy = client.session("kept").stream("wait", {"seconds": 60})
        next(busy)
        try:
            assert client.initialize_session("idle")
            started = time.monotonic()
            # ended_sessions carries no session id: nothing but the timer sweeps
            eventually(lambda: client.execute("ended_sessions") == ["idle"], timeout=5, what="the idle session ending")
            assert time.monotonic() - started >= 0.3
            assert "kept" not in client.execute("ended_sessions")  # in use by a call for longer than the TTL
        finally:
            busy.close()
        eventually(lambda: client.execute("ended_sessions") == ["idle", "kept"], timeout=5)
