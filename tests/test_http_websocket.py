"""The HTTP front's WebSocket (``/v1/ws``) through a real WebSocket client (``websockets``): many calls on one
socket, unary results and errors, chunks tagged with their call, NumPy chunks as binary frames, cancel, deadlines,
malformed frames, a client that goes away, and the token on the handshake."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .http_support import base_url, bearer, http_worker, recv, tool_events, until_end
from .support import eventually
from .workers import Worker

pytestmark = pytest.mark.timeout(60)

TOKEN = "ws-token-123"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Worker, httpx.Client]]:
    with http_worker("--worker-id", "ws-worker") as pair:
        yield pair


def ws_url(worker: Worker) -> str:
    return f"ws://{worker.host}:{worker.info['http_port']}/v1/ws"


@pytest.fixture
def ws(served: tuple[Worker, httpx.Client]) -> Iterator[ClientConnection]:
    with connect(ws_url(served[0]), additional_headers=bearer(), open_timeout=10) as socket:
        yield socket


def call(ws: ClientConnection, call_id: str, tool: str, args: dict[str, Any] | None = None, **opts: Any) -> None:
    ws.send(json.dumps({"op": "call", "id": call_id, "tool": tool, "args": args or {}, **opts}))


def test_many_calls_in_flight_on_one_socket(ws: ClientConnection) -> None:
    call(ws, "numbers", "stream_numbers", {"count": 200})
    call(ws, "items", "stream_items", {"count": 3})
    call(ws, "sum", "add", {"a": 2, "b": 3})
    call(ws, "slow", "slow_tool", {"seconds": 0.2})
    by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ended: set[str] = set()
    while len(ended) < 4:
        frame = recv(ws)
        by_call[frame["id"]].append(frame)
        if frame["event"] in ("final", "result", "error"):
            ended.add(frame["id"])
    numbers = by_call["numbers"]
    assert [f["chunk"]["seq"] for f in numbers] == list(range(201))
    assert [f["event"] for f in numbers] == ["chunk"] * 200 + ["final"]
    assert numbers[5]["chunk"]["data"] == {"number": 5, "is_last": False}
    assert numbers[-1]["chunk"]["metadata"]["worker_id"] == "ws-worker"
    items = by_call["items"]
    assert [(f["event"], f["chunk"]["data"]["index"]) for f in items] == [("chunk", 1), ("chunk", 2), ("final", 3)]
    [result] = by_call["sum"]
    assert (result["event"], result["result"], result["content_type"]) == ("result", 5.0, "application/json")
    assert result["metadata"]["tool_type"] == "remote"
    assert by_call["slow"][0]["result"] == {"slept": 0.2, "cancelled": False}


def test_numpy_chunks_come_as_binary_frames(ws: ClientConnection) -> None:
    call(ws, "arrays", "stream_arrays", {"batches": 2, "batch_rows": 3, "cols": 5})
    frames = until_end(ws, "arrays")
    block = np.random.default_rng(0).standard_normal((3, 5), dtype=np.float32)
    arrays = [f for f in frames if f["event"] == "chunk"]
    assert len(arrays) == 2
    for i, frame in enumerate(arrays):
        chunk = frame["chunk"]
        assert chunk["content_type"] == "application/x-npy" and chunk["seq"] == i
        assert chunk["data"] == {"dtype": "<f4", "shape": [3, 5]}
        block[0, 0] = i
        np.testing.assert_array_equal(frame["array"], block)
    assert frames[-1]["event"] == "final"


def test_unary_and_stream_errors_are_error_events(ws: ClientConnection) -> None:
    call(ws, "f", "fail", {"message": "bad epochs"})
    [error] = until_end(ws, "f")
    assert error["event"] == "error"
    assert (error["error"]["type"], error["error"]["code"], error["error"]["message"]) == (
        "ValueError",
        "UNKNOWN",
        "bad epochs",
    )
    assert "adapters/showcase/adapter.py" in error["error"]["traceback"]
    call(ws, "n", "nope")
    assert until_end(ws, "n")[0]["error"]["code"] == "NOT_FOUND"
    call(ws, "a", "add", {"a": 1})
    assert until_end(ws, "a")[0]["error"]["code"] == "INVALID_ARGUMENT"
    call(ws, "s", "failing_stream", {"fail_at": 2})
    frames = until_end(ws, "s")
    assert [f["event"] for f in frames] == ["chunk", "chunk", "error"]
    assert frames[-1]["error"]["message"] == "failed at step 3"


def test_cancel_ends_a_call_with_cancelled_and_stops_its_tool(
    ws: ClientConnection, served: tuple[Worker, httpx.Client]
) -> None:
    client = served[1]
    call(ws, "endless", "endless_stream", {"interval_ms": 5, "tag": "ws-cancel"})
    assert [recv(ws)["chunk"]["seq"] for _ in range(3)] == [0, 1, 2]
    ws.send(json.dumps({"op": "cancel", "id": "endless"}))
    frames = until_end(ws, "endless")
    assert frames[-1]["event"] == "error" and frames[-1]["error"]["code"] == "CANCELLED"
    eventually(lambda: "finally" in tool_events(client, "ws-cancel"))
    # a unary call too: its tool sees the flag
    call(ws, "slow", "slow_tool", {"seconds": 30, "tag": "ws-cancel-unary"})
    eventually(lambda: "started" in tool_events(client, "ws-cancel-unary"))
    ws.send(json.dumps({"op": "cancel", "id": "slow"}))
    assert until_end(ws, "slow")[-1]["error"]["code"] == "CANCELLED"
    eventually(lambda: "cancel_seen" in tool_events(client, "ws-cancel-unary"))
    # cancelling what is not in flight is not an error; the socket goes on
    ws.send(json.dumps({"op": "cancel", "id": "gone-already"}))
    call(ws, "after", "add", {"a": 1, "b": 1})
    assert until_end(ws, "after")[0]["result"] == 2


def test_deadlines_over_the_socket(ws: ClientConnection) -> None:
    call(ws, "d", "endless_stream", {"interval_ms": 20}, timeout_ms=200)
    frames = until_end(ws, "d")
    assert frames[-1]["error"]["code"] == "DEADLINE_EXCEEDED"
    call(ws, "u", "slow_tool", {"seconds": 30}, timeout_ms=100)
    assert until_end(ws, "u")[-1]["error"]["code"] == "DEADLINE_EXCEEDED"


def test_latest_and_rate_over_the_socket(ws: ClientConnection) -> None:
    call(ws, "l", "stream_numbers", {"count": 20_000}, overflow="latest", max_rate_hz=20)
    frames = until_end(ws, "l")
    chunks = [f["chunk"] for f in frames if f["event"] == "chunk"]
    assert 1 <= len(chunks) < 200 and frames[-1]["event"] == "final"
    assert int(frames[-1]["chunk"]["metadata"]["dropped_chunks"]) == 20_000 - len(chunks)


@pytest.mark.parametrize(
    ("frame", "error_id", "message"),
    [
        ("not json", None, "not valid JSON"),
        ("[1, 2]", None, "must be a JSON object"),
        ('{"op": "call", "tool": "add"}', None, "needs an 'id'"),
        ('{"op": "call", "id": 7, "tool": "add"}', None, "needs an 'id'"),
        ('{"op": "launch", "id": "x"}', "x", "unknown op 'launch'"),
        ('{"op": "call", "id": "x"}', "x", "needs 'tool'"),
        ('{"op": "call", "id": "x", "tool": "add", "args": [1]}', "x", "'args' must be a JSON object"),
        ('{"op": "call", "id": "x", "tool": "add", "timeout_ms": "soon"}', "x", "timeout_ms"),
        ('{"op": "call", "id": "x", "tool": "stream_numbers", "overflow": "oldest"}', "x", "overflow"),
        ('{"op": "call", "id": "x", "tool": "stream_numbers", "max_rate_hz": 0}', "x", "max_rate_hz"),
        (b"\x00\x01binary", None, "binary frames are not accepted"),
    ],
)
def test_malformed_frames_get_an_error_and_the_socket_stays_open(
    ws: ClientConnection, frame: str | bytes, error_id: str | None, message: str
) -> None:
    ws.send(frame)
    error = recv(ws)
    assert (error["id"], error["event"], error["error"]["code"]) == (error_id, "error", "INVALID_ARGUMENT")
    assert message in error["error"]["message"], error
    call(ws, "ok", "add", {"a": 1, "b": 2})
    assert until_end(ws, "ok")[0]["result"] == 3


def test_a_duplicate_call_id_is_refused_and_the_first_call_goes_on(ws: ClientConnection) -> None:
    call(ws, "dup", "stream_progress", {"steps": 3, "delay_ms": 50})
    call(ws, "dup", "add", {"a": 1, "b": 1})
    frames = until_end(ws, "dup")
    assert frames[0]["event"] == "error" and "still in flight" in frames[0]["error"]["message"]
    rest = until_end(ws, "dup")
    assert [f["event"] for f in rest] == ["chunk", "chunk", "chunk", "final"]


def test_a_client_that_goes_away_cancels_all_its_calls(served: tuple[Worker, httpx.Client]) -> None:
    worker, client = served
    with connect(ws_url(worker), additional_headers=bearer(), open_timeout=10) as socket:
        for n in range(3):
            call(socket, f"e{n}", "endless_stream", {"interval_ms": 5, "tag": f"ws-gone-{n}"})
        seen: set[str] = set()
        while len(seen) < 3:
            seen.add(recv(socket)["id"])
    for n in range(3):
        eventually(lambda n=n: "finally" in tool_events(client, f"ws-gone-{n}"))


def test_the_handshake_needs_the_token_or_the_session_with_its_secret_from_the_own_origin() -> None:
    with http_worker(env={"KRAIT_TOKEN": TOKEN}, auth=False) as (worker, client):
        url = ws_url(worker)
        own = base_url(worker)
        with pytest.raises(InvalidStatus) as refused:
            connect(url, open_timeout=10)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "UNAUTHENTICATED"
        with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=10) as socket:
            call(socket, "a", "add", {"a": 1, "b": 2})
            assert until_end(socket, "a")[0]["result"] == 3
        login = client.post("/v1/login", json={"token": TOKEN})
        assert login.status_code == 200
        cookie = {"Cookie": f"krait_session={client.cookies['krait_session']}"}
        protocols = ["krait.v1", f"krait.session.{login.json()['session']}"]
        with pytest.raises(InvalidStatus) as foreign:
            connect(url, additional_headers=cookie, subprotocols=protocols, origin="http://evil.example")
        assert foreign.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as no_origin:
            connect(url, additional_headers=cookie, subprotocols=protocols, open_timeout=10)
        assert no_origin.value.response.status_code == 403
        # the cookie alone (as a server on another port of 127.0.0.1 receives it) is refused
        with pytest.raises(InvalidStatus) as no_secret:
            connect(url, additional_headers=cookie, subprotocols=["krait.v1"], origin=own, open_timeout=10)
        assert no_secret.value.response.status_code == 401
        with connect(url, additional_headers=cookie, subprotocols=protocols, origin=own, open_timeout=10) as socket:
            assert socket.subprotocol == "krait.v1"  # the secret is never echoed
            call(socket, "s", "stream_numbers", {"count": 2})
            assert [f["event"] for f in until_end(socket, "s")] == ["chunk", "chunk", "final"]
