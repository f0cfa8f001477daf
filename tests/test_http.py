"""The HTTP front (serve --http-port) through a real HTTP client: tools, unary calls and their errors, SSE streams
(order, content, final and error events, NumPy chunks, overflow and rate), cancellation when the client goes,
deadlines, sessions, --max-calls, the token (bearer, login cookie and its secret, Origin) and TLS. Attacks
(slow sockets, guessing, replayed cookies, large bodies) are in test_http_hostile.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from python_worker.transports.link_io import READY
from python_worker.transports.link_io import link_pb as _link_pb

from .certs import Certs, make_certs
from .http_support import base_url, bearer, events, http_worker, open_worker, stream_events, tool_events
from .support import eventually
from .workers import PYTHON, ROOT, Worker, running_worker

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-http-token"


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with running_worker("adapters.showcase:ShowcaseAdapter", "--http-port", "0", "--worker-id", "http-worker") as w:
        yield w


@pytest.fixture
def client(worker: Worker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url(worker), timeout=30, headers=bearer()) as c:
        yield c


# -- tools and unary calls --------------------------------------------------------------------------------------
def test_the_tools_with_their_schemas(client: httpx.Client) -> None:
    body = client.get("/v1/tools").json()
    assert body["worker_id"] == "http-worker"
    assert body["adapter"] == "adapters.showcase:ShowcaseAdapter"
    names = [t["name"] for t in body["tools"]]
    assert names == sorted(names) and {"add", "stream_progress", "endless_stream"} <= set(names)
    tools = {t["name"]: t for t in body["tools"]}
    add = tools["add"]
    assert add["streaming"] is False and add["description"] == "Add two numbers"
    assert add["parameters"]["required"] == ["a", "b"]
    assert add["parameters"]["properties"]["a"]["type"] == "number"
    assert add["result"] == {"type": "number"}
    assert tools["stream_progress"]["streaming"] is True


def test_a_unary_call_answers_its_result_and_metadata(client: httpx.Client) -> None:
    response = client.post("/v1/tools/add", json={"a": 1.5, "b": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == 3.5 and body["content_type"] == "application/json"
    assert body["metadata"]["worker_id"] == "http-worker" and body["metadata"]["tool_type"] == "remote"
    assert int(body["metadata"]["execution_time_ms"]) >= 0
    # integers beyond 64 bits stay exact
    assert json.loads(client.post("/v1/tools/big_int", json={"exponent": 70}).text)["result"] == 2**70
    assert client.post("/v1/tools/greet", json={"name": "Ada"}).json()["result"] == "Hello, Ada!"
    assert client.post("/v1/tools/echo").json()["result"] is None  # no body: no arguments


@pytest.mark.parametrize(
    ("tool", "body", "status", "code", "error_type", "message"),
    [
        ("fail", {"message": "epochs must be > 0"}, 500, "UNKNOWN", "ValueError", "epochs must be > 0"),
        ("nope", {}, 404, "NOT_FOUND", "ToolNotFound", "unknown tool 'nope'"),
        ("add", {"a": 1}, 400, "INVALID_ARGUMENT", "ArgumentError", "b"),
        ("add", {"a": "x", "b": 1}, 400, "INVALID_ARGUMENT", "ArgumentError", "a"),
        ("add", b'{"a": 1', 400, "INVALID_ARGUMENT", "ArgumentError", "the request body is not valid JSON"),
        ("add", b"[1, 2]", 400, "INVALID_ARGUMENT", "ArgumentError", "must be a JSON object"),
        ("add", b'{"a": NaN}', 400, "INVALID_ARGUMENT", "ArgumentError", "not valid JSON"),
        ("stream_numbers", {}, 400, "FAILED_PRECONDITION", "WrongRpc", "/v1/tools/stream_numbers/stream"),
    ],
)
def test_unary_errors_have_their_status(
    client: httpx.Client, tool: str, body: object, status: int, code: str, error_type: str, message: str
) -> None:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = client.post(f"/v1/tools/{tool}", **kw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, error_type)
    assert message in error["message"]
    assert ("traceback" in error) == (code == "UNKNOWN")  # only a tool's own failure has one


def test_a_tool_error_carries_its_traceback_and_fields(client: httpx.Client) -> None:
    error = client.post("/v1/tools/fail", json={"message": "boom"}).json()["error"]
    assert error["traceback"].splitlines()[1].strip().startswith('File "')
    assert "adapters/showcase/adapter.py" in error["traceback"].splitlines()[1]  # the tool's frame comes first
    assert "python_worker/transports" not in error["traceback"]
    quota = client.post("/v1/tools/quota", json={"retry_after": 2.5})
    assert quota.status_code == 500
    assert quota.json()["error"]["details"] == {"retry_after": 2.5, "limit": 100}


def test_sessions_keep_state_between_calls(client: httpx.Client) -> None:
    for expected in (1, 2, 3):
        body = client.post("/v1/tools/session_counter", params={"session": "http-s1"}).json()
        assert body["result"]["count"] == expected and body["result"]["session_id"] == "http-s1"
    assert client.post("/v1/tools/session_counter", params={"session": "http-s2"}).json()["result"]["count"] == 1


# -- SSE --------------------------------------------------------------------------------------------------------
def test_sse_chunks_in_order_then_the_final_event(client: httpx.Client) -> None:
    got = stream_events(client, "stream_items", {"count": 4})
    assert [e.event for e in got] == ["chunk", "chunk", "chunk", "final"]
    assert [e.data["seq"] for e in got] == [0, 1, 2, 3] and [e.id for e in got] == ["0", "1", "2", "3"]
    assert [e.data["data"] for e in got] == [{"index": i, "value": f"Item {i}"} for i in range(1, 5)]
    assert all(e.data["content_type"] == "application/json" for e in got)
    assert got[0].data["metadata"] == {"item": "1"}
    final = got[-1].data["metadata"]
    assert final["item"] == "4" and final["worker_id"] == "http-worker" and final["tool_type"] == "remote"
    assert "execution_time_ms" in final and "dropped_chunks" not in final


def test_sse_by_get_with_url_encoded_args_and_text_chunks(client: httpx.Client) -> None:
    with client.stream("GET", "/v1/tools/stream_text/stream", params={"args": json.dumps({"lines": 2})}) as response:
        got = list(events(response))
    assert [(e.event, e.data["data"]) for e in got] == [("chunk", "line 1"), ("chunk", "line 2"), ("final", None)]
    assert got[0].data["content_type"] == "text/plain; charset=utf-8"
    assert got[-1].data["metadata"]["synthetic_final"] == "true"


def test_sse_numpy_chunks_carry_dtype_shape_and_bytes(client: httpx.Client) -> None:
    got = stream_events(client, "stream_arrays", {"batches": 3, "batch_rows": 5, "cols": 7})
    block = np.random.default_rng(0).standard_normal((5, 7), dtype=np.float32)  # what the tool yields
    chunks = [e.data for e in got if e.event == "chunk"]
    assert len(chunks) == 3
    for i, chunk in enumerate(chunks):
        assert chunk["content_type"] == "application/x-npy"
        data = chunk["data"]
        assert (data["dtype"], data["shape"]) == ("<f4", [5, 7])
        array = np.frombuffer(base64.b64decode(data["base64"]), dtype=data["dtype"]).reshape(data["shape"])
        block[0, 0] = i
        np.testing.assert_array_equal(array, block)


def test_sse_progress_reports_are_chunks(client: httpx.Client) -> None:
    got = stream_events(client, "progress_demo", {"steps": 2})
    progress = [e.data for e in got if e.data["metadata"].get("krait.event") == "progress"]
    assert [(p["data"]["progress"], p["data"]["total"]) for p in progress] == [(1, 2), (2, 2)]


def test_sse_error_event_after_the_chunks(client: httpx.Client) -> None:
    got = stream_events(client, "failing_stream", {"fail_at": 2})
    assert [e.event for e in got] == ["chunk", "chunk", "error"]
    error = got[-1].data["error"]
    assert (error["type"], error["code"], error["message"]) == ("ValueError", "UNKNOWN", "failed at step 3")
    assert "failing_stream" in error["traceback"]


@pytest.mark.parametrize(
    ("tool", "params", "status", "code", "message"),
    [
        ("nope", {}, 404, "NOT_FOUND", "unknown tool"),
        ("add", {}, 400, "FAILED_PRECONDITION", "POST /v1/tools/add"),
        ("stream_numbers", {"args": '{"count": "many"}'}, 400, "INVALID_ARGUMENT", "count"),
        ("stream_numbers", {"args": "[1]"}, 400, "INVALID_ARGUMENT", "the args parameter must be a JSON object"),
        ("stream_numbers", {"max_rate_hz": "fast"}, 400, "INVALID_ARGUMENT", "max_rate_hz"),
        ("stream_numbers", {"max_rate_hz": "-1"}, 400, "INVALID_ARGUMENT", "max_rate_hz"),
        ("stream_numbers", {"overflow": "oldest"}, 400, "INVALID_ARGUMENT", "overflow must be one of block, latest"),
        ("stream_numbers", {"timeout_ms": "0"}, 400, "INVALID_ARGUMENT", "timeout_ms"),
        ("stream_numbers", {"timeout_ms": "1" + "0" * 400}, 400, "INVALID_ARGUMENT", "timeout_ms"),
        ("stream_numbers", {"session": "s" * 5000}, 400, "INVALID_ARGUMENT", "session_id"),
    ],
)
def test_refusals_before_a_stream_starts_are_plain_json(
    client: httpx.Client, tool: str, params: dict[str, str], status: int, code: str, message: str
) -> None:
    response = client.get(f"/v1/tools/{tool}/stream", params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], error


def test_a_client_that_goes_away_cancels_the_tool(client: httpx.Client, worker: Worker) -> None:
    args = {"interval_ms": 5, "tag": "sse-gone"}
    with (
        httpx.Client(base_url=base_url(worker), timeout=30, headers=bearer()) as other,
        other.stream("POST", "/v1/tools/endless_stream/stream", json=args) as r,
    ):
        got = events(r)
        assert [next(got).data["data"]["tick"] for _ in range(3)] == [0, 1, 2]
    # the connection is closed: the tool's generator was closed at its yield
    record = eventually(lambda: tool_events(client, "sse-gone").get("finally") and tool_events(client, "sse-gone"))
    assert "started" in record


def test_a_quiet_stream_is_cancelled_when_its_client_goes(client: httpx.Client, worker: Worker) -> None:
    """The client goes while the tool yields nothing: the departure is seen without a write."""
    args = {"seconds": 60, "tag": "sse-quiet"}
    with (
        httpx.Client(base_url=base_url(worker), timeout=30, headers=bearer()) as other,
        other.stream("POST", "/v1/tools/blocking_stream/stream", json=args) as r,
    ):
        got = events(r)
        assert next(got).data["data"] == {"blocked_for": 60}
        assert "finally" not in tool_events(client, "sse-quiet")
    record = eventually(lambda: tool_events(client, "sse-quiet").get("finally") and tool_events(client, "sse-quiet"))
    assert "cancel_seen" in record


def test_a_stream_past_its_deadline_ends_with_deadline_exceeded(client: httpx.Client) -> None:
    got = stream_events(client, "endless_stream", {"interval_ms": 20, "tag": "sse-deadline"}, timeout_ms=300)
    assert got[-1].event == "error" and got[-1].data["error"]["code"] == "DEADLINE_EXCEEDED"
    assert all(e.event == "chunk" for e in got[:-1])
    eventually(lambda: "finally" in tool_events(client, "sse-deadline"))


def test_a_unary_call_past_its_deadline_is_504_and_the_tool_is_told(client: httpx.Client) -> None:
    response = client.post(
        "/v1/tools/slow_tool", json={"seconds": 30, "tag": "unary-deadline"}, params={"timeout_ms": 100}
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    eventually(lambda: "cancel_seen" in tool_events(client, "unary-deadline"))


def test_a_unary_client_that_goes_away_cancels_the_tool(client: httpx.Client, worker: Worker) -> None:
    with (
        httpx.Client(base_url=base_url(worker), timeout=0.5, headers=bearer()) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/v1/tools/slow_tool", json={"seconds": 30, "tag": "unary-gone"})
    eventually(lambda: "cancel_seen" in tool_events(client, "unary-gone"))


# -- overflow and rate ------------------------------------------------------------------------------------------
def test_latest_keeps_the_newest_chunk_and_never_drops_the_final(client: httpx.Client) -> None:
    count = 20_000
    got = stream_events(client, "stream_numbers", {"count": count}, overflow="latest", max_rate_hz=20)
    chunks = [e.data for e in got if e.event == "chunk"]
    assert got[-1].event == "final" and got[-1].data["seq"] == count  # the synthetic final after 20000 chunks
    # far fewer events than chunks: at 20 per second, sending all 20000 would take over 16 minutes
    assert 1 <= len(chunks) < 200
    seqs = [c["seq"] for c in chunks]
    assert seqs == sorted(set(seqs)) and seqs[-1] > len(seqs)  # in order, with gaps
    assert all(c["data"]["number"] == c["seq"] for c in chunks)
    assert int(got[-1].data["metadata"]["dropped_chunks"]) == count - len(chunks)


def test_block_delivers_every_chunk_at_the_rate(client: httpx.Client) -> None:
    got = stream_events(client, "stream_numbers", {"count": 30}, max_rate_hz=200, overflow="block")
    assert [e.data["seq"] for e in got] == list(range(31))
    assert "dropped_chunks" not in got[-1].data["metadata"]


def _ticks(client: httpx.Client, tag: str) -> int:
    return int(tool_events(client, tag).get("ticks", 0))


def _settled(client: httpx.Client, tag: str) -> int:
    """The tool's tick count once it stops growing (the tool is paused at its yield)."""
    seen: list[int] = []

    def stable() -> int | None:
        seen.append(_ticks(client, tag))
        time.sleep(0.1)
        return seen[-1] if len(seen) > 2 and seen[-1] == seen[-2] == seen[-3] else None

    return eventually(stable, timeout=20, what=f"the tick count of {tag} to settle (last {seen[-3:]})")


# what a paused stream may hold between the tool and the client: the call's buffer (8192 chunks), the batch the
# pump holds and the one being sent (4096 each), and what the connection buffers
BUFFERED_MAX = 8192 + 2 * 4096 + 4096


@pytest.mark.parametrize("rate", [None, 50])
def test_block_backpressures_the_tool(client: httpx.Client, worker: Worker, rate: int | None) -> None:
    tag = f"block-{rate}"
    params = {"overflow": "block"} | ({"max_rate_hz": rate} if rate else {})
    with (
        httpx.Client(base_url=base_url(worker), timeout=30, headers=bearer()) as slow,
        slow.stream("POST", "/v1/tools/endless_stream/stream", json={"interval_ms": 0, "tag": tag}, params=params) as r,
    ):
        got = events(r)
        assert next(got).data["seq"] == 0
        # the client stops reading: the tool must stop too
        ticks = _settled(client, tag)
        if rate:
            assert ticks < BUFFERED_MAX
        else:  # the socket's buffers hold more small events: still a bound, where the tool alone would run on
            assert ticks < 2_000_000
        # reading again resumes the tool, and every chunk arrives: no gap
        seqs = [next(got).data["seq"] for _ in range(50)]
        assert seqs == list(range(1, 51))
    eventually(lambda: "finally" in tool_events(client, tag))


def test_latest_never_pauses_the_tool(client: httpx.Client, worker: Worker) -> None:
    tag = "latest-runs"
    with httpx.Client(base_url=base_url(worker), timeout=30, headers=bearer()) as slow:
        params = {"overflow": "latest", "max_rate_hz": 5}
        with slow.stream(
            "POST", "/v1/tools/endless_stream/stream", json={"interval_ms": 0, "tag": tag}, params=params
        ) as r:
            got = events(r)
            first = next(got).data["seq"]
            # the client reads at most 5 events a second; the tool runs on far past what block would allow
            eventually(lambda: _ticks(client, tag) > 5 * BUFFERED_MAX, timeout=30, what="the tool to run on")
            second = next(got).data["seq"]
            assert second > first + 1  # the chunks in between were dropped
    eventually(lambda: "finally" in tool_events(client, tag))


# -- --max-calls, readiness, the link, shutdown -------------------------------------------------------------------
def test_max_calls_refuses_with_429() -> None:
    with http_worker("--max-calls", "1") as (_, client):
        with client.stream("POST", "/v1/tools/blocking_stream/stream", json={"seconds": 60}) as r:
            got = events(r)  # held: a generator dropped here would close the response
            next(got)
            refused = client.post("/v1/tools/add", json={"a": 1, "b": 2})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
            stream = client.get("/v1/tools/stream_numbers/stream")
            assert stream.status_code == 429
        # the stream's slot is freed once its client has gone
        eventually(lambda: client.post("/v1/tools/add", json={"a": 1, "b": 2}).status_code == 200)


def test_http_port_is_announced_and_serves_beside_grpc(worker: Worker) -> None:
    from python_worker.client import Client

    assert isinstance(worker.info["http_port"], int) and worker.info["http_port"] != worker.port
    with Client(worker.target, timeout=10) as grpc_client:
        assert grpc_client.call("add", {"a": 2, "b": 3}) == 5


def _link_frames(process: subprocess.Popen[bytes]) -> Iterator[object]:
    assert process.stdout is not None
    while header := process.stdout.read(4):
        yield _link_pb.LinkFrame.FromString(process.stdout.read(int.from_bytes(header, "big")))


def test_http_port_over_the_link_and_stdin_closing_stops_it() -> None:
    cmd = [PYTHON, "-m", "python_worker", "serve", "--adapter", "adapters.showcase:ShowcaseAdapter", "--link"]
    process = subprocess.Popen([*cmd, "--http-port", "0"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready = next(f for f in _link_frames(process) if f.kind == READY)
        assert "grpc_port" not in ready.metadata
        port = int(ready.metadata["http_port"])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=bearer()) as client:
            assert client.post("/v1/tools/add", json={"a": 1, "b": 1}).json()["result"] == 2
            assert [e.data["seq"] for e in stream_events(client, "stream_numbers", {"count": 3})] == [0, 1, 2, 3]
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_sigterm_ends_open_streams_and_the_worker_exits_within_its_grace() -> None:
    with http_worker("--grace", "4") as (w, client):
        with client.stream("POST", "/v1/tools/endless_stream/stream", json={"interval_ms": 10}) as r:
            got = events(r)
            next(got)
            w.process.send_signal(signal.SIGTERM)
            rest = list(got)
        assert rest[-1].event == "error" and rest[-1].data["error"]["code"] == "UNAVAILABLE"
        assert w.process.wait(10) == 0
        with pytest.raises(httpx.ConnectError):
            client.get("/v1/tools")


def test_an_http_port_in_use_is_a_clear_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [PYTHON, "-m", "python_worker", "serve", "--adapter", "adapters.showcase:ShowcaseAdapter"]
        result = subprocess.run(
            [*cmd, "--http-port", str(port), "--stdin-watch", "off"], cwd=ROOT, capture_output=True, timeout=60
        )
    assert result.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr.decode()
    assert b"KRAIT_READY" not in result.stdout and b"Traceback" not in result.stderr


def test_without_the_http_libraries_http_port_is_a_clear_error() -> None:
    # the worker as it runs where the `http` extra is not installed: importing uvicorn fails
    code = (
        "import sys; sys.modules['uvicorn'] = None; from python_worker.cli import main; "
        "sys.exit(main(['serve', '--adapter', 'adapters.showcase:ShowcaseAdapter', '--http-port', '0', "
        "'--stdin-watch', 'off']))"
    )
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'krait[http]'" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


# -- the token, the login cookie, the origin ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured() -> Iterator[Worker]:
    with running_worker("adapters.showcase:ShowcaseAdapter", "--http-port", "0", env={"KRAIT_TOKEN": TOKEN}) as w:
        yield w


def test_without_a_token_calls_are_401_and_the_bearer_token_works(secured: Worker) -> None:
    with httpx.Client(base_url=base_url(secured), timeout=30) as client:
        for response in (
            client.get("/v1/tools"),
            client.post("/v1/tools/add", json={"a": 1, "b": 2}),
            client.get("/v1/tools/stream_numbers/stream"),
            client.get("/v1/tools", headers={"Authorization": "Bearer wrong"}),
            client.get("/v1/tools", headers={"Authorization": f"Basic {TOKEN}"}),
        ):
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "UNAUTHENTICATED"
            assert TOKEN not in response.text
        assert client.get("/v1/auth").json() == {"required": True, "authenticated": False}
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/tools/add", json={"a": 1, "b": 2}, headers=bearer).json()["result"] == 3
        assert client.get("/v1/auth", headers=bearer).json() == {"required": True, "authenticated": True}
        with client.stream("POST", "/v1/tools/stream_numbers/stream", json={"count": 2}, headers=bearer) as r:
            assert [e.event for e in events(r)] == ["chunk", "chunk", "final"]


def test_login_answers_a_secret_and_sets_an_http_only_cookie_that_needs_it(secured: Worker) -> None:
    url = base_url(secured)
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/login", content=b"token").status_code == 400
        login = client.post("/v1/login", json={"token": TOKEN})
        assert login.status_code == 200, login.text
        secret = login.json()["session"]
        assert len(secret) >= 43 and TOKEN not in login.text
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("krait_session=") and TOKEN not in cookie and secret not in cookie
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path"} <= attributes and "secure" not in attributes  # plain HTTP
        assert "samesite=strict" in cookie.lower()
        session = {"X-Krait-Session": secret}
        assert client.get("/v1/auth", headers=session).json() == {"required": True, "authenticated": True}
        assert client.get("/v1/auth").json() == {"required": True, "authenticated": False}  # the cookie alone
        assert client.get("/v1/tools", headers=session).status_code == 200
        # a GET stream (fetch) carries the cookie and the secret
        with client.stream(
            "GET", "/v1/tools/stream_numbers/stream", params={"args": '{"count": 2}'}, headers=session
        ) as r:
            assert [e.data["seq"] for e in events(r)] == [0, 1, 2]
        # a POST with the session must come from the worker's own origin
        missing = client.post("/v1/tools/add", json={"a": 1, "b": 2}, headers=session)
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "PERMISSION_DENIED"
        foreign = client.post(
            "/v1/tools/add", json={"a": 1, "b": 2}, headers={**session, "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        own = client.post("/v1/tools/add", json={"a": 1, "b": 2}, headers={**session, "Origin": url})
        assert own.status_code == 200 and own.json()["result"] == 3
        cross = client.get("/v1/tools", headers={**session, "Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        # logging out (with the secret) ends the session, whoever still holds the cookie
        cookie_value = client.cookies["krait_session"]
        assert client.post("/v1/logout", headers={**session, "Origin": url}).status_code == 204
        with httpx.Client(base_url=url, timeout=30, cookies={"krait_session": cookie_value}) as stale:
            assert stale.get("/v1/tools", headers=session).status_code == 401
        assert client.get("/v1/auth", headers=session).json()["authenticated"] is False


def test_without_a_token_foreign_origins_and_hosts_are_refused() -> None:
    with open_worker() as worker, httpx.Client(base_url=base_url(worker), timeout=30) as client:
        assert client.get("/v1/auth").json() == {"required": False, "authenticated": True}
        evil = client.post("/v1/tools/add", json={"a": 1, "b": 2}, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        rebound = client.post(
            "/v1/tools/add", json={"a": 1, "b": 2}, headers={"Host": f"evil.example:{worker.info['http_port']}"}
        )
        assert rebound.status_code == 403 and "loopback" in rebound.json()["error"]["message"]
        own = client.post("/v1/tools/add", json={"a": 1, "b": 2}, headers={"Origin": base_url(worker)})
        assert own.status_code == 200


def test_the_page_and_the_api_cannot_be_framed_or_sniffed(client: httpx.Client) -> None:
    # the page starts tools with its cookie: another site must not frame it (clickjacking), and it runs only its
    # own scripts; errors and refusals carry the headers too
    for response in (client.get("/"), client.get("/static/main.js"), client.get("/v1/tools"), client.get("/nope")):
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"


def test_a_body_over_the_maximum_message_size_is_413() -> None:
    with http_worker("--max-message-mb", "0.01") as (_, client):
        response = client.post("/v1/tools/echo", json={"value": "x" * 20_000})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert client.post("/v1/tools/echo", json={"value": "x" * 100}).status_code == 200


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("http-certs"))


def test_tls_and_token_on_a_routable_style_host(certs: Certs, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    args = (
        "--http-port",
        "0",
        "--tls-cert",
        certs.server_crt,
        "--tls-key",
        certs.server_key,
        "--token-file",
        str(token_file),
    )
    with running_worker("adapters.showcase:ShowcaseAdapter", *args, host="127.0.0.2") as w:
        verify = ssl.create_default_context(cafile=certs.ca)
        url = base_url(w, "https")
        with httpx.Client(base_url=url, verify=verify, timeout=30) as client:
            assert client.get("/v1/tools").status_code == 401
            login = client.post("/v1/login", json={"token": TOKEN}, headers={"Origin": url})
            assert login.status_code == 200 and "secure" in login.headers["set-cookie"].lower()
            page = {"Origin": url, "X-Krait-Session": login.json()["session"]}
            with client.stream("POST", "/v1/tools/stream_numbers/stream", json={"count": 2}, headers=page) as r:
                assert [e.data["seq"] for e in events(r)] == [0, 1, 2]
            got = client.post("/v1/tools/add", json={"a": 2, "b": 2}, headers=page)
            assert got.json()["result"] == 4
        with (
            httpx.Client(base_url=f"http://127.0.0.2:{w.info['http_port']}", timeout=5) as plain,
            pytest.raises(httpx.HTTPError),
        ):
            plain.get("/v1/tools")


def test_a_routable_host_without_tls_and_token_is_refused() -> None:
    cmd = [PYTHON, "-m", "python_worker", "serve", "--adapter", "adapters.showcase:ShowcaseAdapter"]
    result = subprocess.run(
        [*cmd, "--host", "0.0.0.0", "--http-port", "0", "--stdin-watch", "off"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        env={**os.environ, "KRAIT_TOKEN": ""},
    )
    assert result.returncode == 2 and b"refusing to serve 0.0.0.0" in result.stderr


def test_the_fronts_connections_have_nagle_off() -> None:
    """Responses are written in two parts (head, body): with Nagle's algorithm on, each response after the first on
    a kept-alive connection waited ~40 ms for the client's delayed ACK. asyncio turns it off only on sockets whose
    protocol says TCP, which the listening socket must therefore name."""
    import asyncio
    import socket

    from python_worker.transports.http.server import _bind

    async def main() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listening = _bind("127.0.0.1", 0)
        server = await asyncio.start_server(accepted, sock=listening)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
            nodelay = await asyncio.wait_for(seen, 10)
            writer.close()
        return nodelay

    assert asyncio.run(main()) != 0
