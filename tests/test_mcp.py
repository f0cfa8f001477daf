"""The MCP front with the official clients: the `mcp` package's over stdio (`serve --mcp`) and Streamable HTTP
(`/mcp` on the HTTP front), and @modelcontextprotocol/sdk's (tests/node/mcp_client.mjs) over both. Real workers,
real processes; every worker is stopped by the test that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from python_worker.client import Client

from .http_support import base_url, bearer, token
from .workers import PYTHON, ROOT, Worker, running_worker

NODE_DIR = ROOT / "tests" / "node"
SHOWCASE = "adapters.showcase:ShowcaseAdapter"
SERVE = ["-m", "python_worker", "serve", "--adapter", SHOWCASE, "--mcp", "--log-level", "warning"]


@contextlib.asynccontextmanager
async def stdio_session(*args: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=PYTHON, args=[*SERVE, *args], cwd=str(ROOT))
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def http_session(worker: Worker, secret: str | None = None) -> AsyncIterator[ClientSession]:
    headers = bearer(secret or token())
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(f"{base_url(worker)}/mcp", http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def run(test: Callable[..., Awaitable[None]], *args: Any) -> None:
    async def bounded() -> None:
        with anyio.fail_after(60):
            await test(*args)

    anyio.run(bounded)


@pytest.fixture(scope="module")
def http_worker() -> Any:
    with running_worker(SHOWCASE, "--http-port", "0", "--worker-id", "mcp-http") as worker:
        yield worker


def expected_input_schema(info: Any) -> dict[str, Any]:
    """The MCP input schema of a tool: its parameters, plus its input stream as a required array of its items
    (MCP has no stream into a tool) unless those items are binary."""
    parameters: dict[str, Any] = json.loads(info.parameters_schema_json)
    if info.input_param and "x-krait-binary" not in json.loads(info.input_schema_json):
        parameters["properties"][info.input_param] = {
            "type": "array",
            "items": json.loads(info.input_schema_json),
            "description": "the tool's input stream, given whole: one array element per item",
        }
        parameters["required"] = [*parameters.get("required", []), info.input_param]
    return parameters


# -- the checks, the same over both transports -------------------------------------------------------------------
async def check_tools_match_list_tools(session: ClientSession, grpc_target: str) -> None:
    listed = {tool.name: tool for tool in (await session.list_tools()).tools}
    with Client(grpc_target, timeout=30) as client:
        infos = {info.name: info for info in client.list_tools()}
    assert set(listed) == set(infos)
    for name, info in infos.items():
        tool = listed[name]
        assert tool.description == info.description
        assert tool.input_schema == expected_input_schema(info)
        result = json.loads(info.result_schema_json) if info.result_schema_json else None
        output = tool.output_schema
        assert output is not None and output["type"] == "object"
        if info.supports_streaming:
            final_data = output["properties"]["final"]["properties"]["data"]
            assert result is None or final_data == {"anyOf": [result, {"type": "null"}]} or "x-krait-binary" in result
        elif result is not None and not result.get("x-krait-binary"):
            assert output["properties"]["result"] == result  # the result annotation's schema, as ListTools has it
    assert listed["add"].output_schema["properties"]["result"] == {"type": "number"}  # type: ignore[index]


async def check_add(session: ClientSession) -> None:
    result = await session.call_tool("add", {"a": 1, "b": 2})
    assert not result.is_error
    assert result.structured_content is not None and result.structured_content["result"] == 3.0
    assert result.structured_content["content_type"] == "application/json"
    assert json.loads(result.content[0].text)["result"] == 3.0  # type: ignore[union-attr]


async def check_stream_progress(session: ClientSession) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    result = await session.call_tool("stream_progress", {"steps": 5}, progress_callback=on_progress)
    chunks = [json.loads(message or "") for _, message in progress]
    assert [value for value, _ in progress] == [1, 2, 3, 4, 5]  # every chunk, in order
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3, 4]
    assert [c["data"]["step"] for c in chunks] == [1, 2, 3, 4, 5]
    assert chunks[-1]["data"]["progress"] == 100.0
    summary = result.structured_content
    assert summary is not None and summary["chunk_count"] == 5 and "chunks" not in summary
    assert summary["final"]["seq"] == 5 and summary["final"]["metadata"]["synthetic_final"] == "true"
    # without a progress token, the chunks come in the result
    result = await session.call_tool("stream_progress", {"steps": 3})
    assert result.structured_content is not None
    assert [c["data"]["step"] for c in result.structured_content["chunks"]] == [1, 2, 3]


async def check_failing_tool(session: ClientSession) -> None:
    result = await session.call_tool("quota", {"retry_after": 1.5})
    assert result.is_error
    error = (result.meta or {})["krait/error"]
    assert error["type"] == "QuotaExceeded" and error["code"] == "UNKNOWN"
    assert error["details"] == {"retry_after": 1.5, "limit": 100}
    assert "raise QuotaExceeded" in error["traceback"]
    assert result.content[0].text.startswith("QuotaExceeded: quota of 100 calls exceeded")  # type: ignore[union-attr]
    # a stream that fails after its first chunks
    result = await session.call_tool("failing_stream", {"fail_at": 2})
    assert result.is_error and (result.meta or {})["krait/error"]["message"] == "failed at step 3"


async def check_bad_input(session: ClientSession) -> None:
    with pytest.raises(MCPError) as caught:
        await session.call_tool("add", {"a": "x", "b": 1})
    assert caught.value.error.code == -32602
    assert caught.value.error.message == "add: argument 'a': Input should be a valid number (got 'x')"
    assert caught.value.error.data == {"type": "ArgumentError", "code": "INVALID_ARGUMENT"}
    with pytest.raises(MCPError) as caught:
        await session.call_tool("no_such_tool", {})
    assert caught.value.error.code == -32602 and "unknown tool 'no_such_tool'" in caught.value.error.message
    await check_add(session)  # still serving


async def check_cancel(session: ClientSession) -> None:
    tag = f"mcp-{uuid.uuid4().hex}"
    ticks = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if value >= 2:
            ticks.set()

    async with anyio.create_task_group() as tg:

        async def endless() -> None:
            await session.call_tool("endless_stream", {"interval_ms": 20, "tag": tag}, progress_callback=on_progress)

        tg.start_soon(endless)
        await ticks.wait()
        tg.cancel_scope.cancel()  # the client sends notifications/cancelled
    events: dict[str, Any] = {}
    for _ in range(100):
        events = (await session.call_tool("stream_events", {"tag": tag})).structured_content["result"]  # type: ignore[index]
        if "finally" in events:
            break
        await anyio.sleep(0.05)
    assert "cancel_seen" in events and "finally" in events  # the tool saw the flag and its finally ran


async def check_sessions(session: ClientSession, expected_prefix: str) -> None:
    first = (await session.call_tool("session_counter", {})).structured_content["result"]  # type: ignore[index]
    second = (await session.call_tool("session_counter", {})).structured_content["result"]  # type: ignore[index]
    assert first["session_id"].startswith(expected_prefix) and second["session_id"] == first["session_id"]
    assert second["count"] == first["count"] + 1


async def check_input(session: ClientSession) -> None:
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert tools["sum_input"].input_schema["properties"]["items"]["type"] == "array"
    result = await session.call_tool("sum_input", {"items": [{"i": 1}, {"i": 2}, {"i": 39}]})
    assert not result.is_error and result.structured_content is not None
    assert result.structured_content["result"] == 42
    with pytest.raises(MCPError) as caught:
        await session.call_tool("sum_input", {"items": [{"i": 1}, {"i": "two"}]})
    assert "sum_input: input item 1" in caught.value.error.message
    # a handler call has no caller to answer it over MCP: the tool is told so
    answer = (await session.call_tool("ask", {"name": "price"})).structured_content["result"]  # type: ignore[index]
    assert answer["error"]["type"] == "HandlersUnavailable"


async def check_binary(session: ClientSession) -> None:
    result = await session.call_tool("big_int", {"exponent": 70})
    assert result.structured_content is not None and result.structured_content["result"] == 2**70


# -- stdio ----------------------------------------------------------------------------------------------------
def test_stdio_lists_calls_streams_fails_cancels(worker: Worker) -> None:
    async def body() -> None:
        async with stdio_session() as session:
            await check_tools_match_list_tools(session, worker.target)
            await check_add(session)
            await check_stream_progress(session)
            await check_failing_tool(session)
            await check_bad_input(session)
            await check_cancel(session)
            await check_sessions(session, "mcp:stdio:")
            await check_binary(session)
            await check_input(session)

    run(body)


def test_stdio_needs_no_token_and_keeps_stdout_for_the_protocol() -> None:
    # no token in the environment and no --no-auth: stdio is the host's own pipe, like the link
    env = {key: value for key, value in os.environ.items() if key not in ("KRAIT_TOKEN", "KRAIT_TOKEN_FILE")}
    process = subprocess.Popen(
        [PYTHON, *SERVE, "--log-level", "info"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        lines = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": _init_params()},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 2, "b": 3}},
            },
        ]
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
        process.stdin.flush()
        replies = [json.loads(_readline(process.stdout)) for _ in range(2)]  # stdout: JSON-RPC messages only
        out, err = process.communicate(b"", timeout=30)  # stdin closed: the worker stops by itself
    finally:
        _reap(process)
    assert [r["id"] for r in replies] == [1, 2] and out == b""
    assert replies[1]["result"]["structuredContent"]["result"] == 5.0
    assert b"KRAIT_READY" not in out and b"serving" in err  # logs on stderr
    assert process.returncode == 0  # stdin closed: the worker stopped by itself


def test_stdio_bad_input_gets_json_rpc_errors_and_the_worker_keeps_serving() -> None:
    # a 1 MiB message limit: a longer line is refused without being buffered whole
    process = subprocess.Popen(
        [PYTHON, *SERVE, "--max-message-mb", "1"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        lines = [
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": _init_params()}),
            json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            "{not json",
            json.dumps({"id": 7, "hello": "there"}),
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 8,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"value": "x" * (2 << 20)}},
                }
            ),
            json.dumps({"jsonrpc": "2.0", "id": 9, "method": "no/such/method"}),
            json.dumps({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"arguments": {}}}),
            # 1e400 parses as an infinity: the engine's own check names the argument
            '{"jsonrpc": "2.0", "id": 12, "method": "tools/call",'
            ' "params": {"name": "add", "arguments": {"a": 1e400}}}',
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 11,
                    "method": "tools/call",
                    "params": {"name": "add", "arguments": {"a": 1, "b": 1}},
                }
            ),
        ]
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(("\n".join(lines) + "\n").encode())
        process.stdin.flush()
        # every line answered, the calls before stdin closes (closing it cancels what is in flight)
        raw = [_readline(process.stdout) for _ in range(8)]
        process.communicate(b"", timeout=30)
    finally:
        _reap(process)
    out = b"".join(raw)
    replies = [json.loads(line) for line in raw]
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for reply in replies:
        by_id.setdefault(reply.get("id"), []).append(reply)
    nulls = sorted(r["error"]["code"] for r in by_id[None])
    assert nulls == [-32700, -32600]  # not JSON; too large (its id unread)
    assert any("more than 1048576 bytes" in r["error"]["message"] for r in by_id[None])
    assert by_id[7][0]["error"]["code"] == -32600  # JSON, but not JSON-RPC: answered with its id
    assert by_id[9][0]["error"]["code"] == -32601  # unknown method
    assert by_id[10][0]["error"]["code"] == -32602  # tools/call without a name
    assert by_id[12][0]["error"]["code"] == -32602 and "not a finite number" in by_id[12][0]["error"]["message"]
    assert by_id[11][0]["result"]["structuredContent"]["result"] == 2.0  # still serving
    assert "Traceback" not in out.decode() and "/work" not in json.dumps(by_id[None])


def test_stdio_too_many_concurrent_calls() -> None:
    async def body() -> None:
        async with stdio_session("--max-calls", "1") as session:
            started = anyio.Event()

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                started.set()

            async with anyio.create_task_group() as tg:

                async def blocking() -> None:
                    await session.call_tool("blocking_stream", {"seconds": 30}, progress_callback=on_progress)

                tg.start_soon(blocking)
                await started.wait()
                with pytest.raises(MCPError) as caught:
                    await session.call_tool("add", {"a": 1, "b": 2})
                assert caught.value.error.code == -32000
                assert caught.value.error.data == {"type": "WorkerOverloaded", "code": "RESOURCE_EXHAUSTED"}
                tg.cancel_scope.cancel()
            # the cancelled stream freed its slot
            for _ in range(100):
                try:
                    await check_add(session)
                    return
                except MCPError:
                    await anyio.sleep(0.05)
            await check_add(session)

    run(body)


# -- Streamable HTTP ------------------------------------------------------------------------------------------
def test_http_lists_calls_streams_fails_cancels(http_worker: Worker) -> None:
    async def body() -> None:
        async with http_session(http_worker) as session:
            await check_tools_match_list_tools(session, http_worker.target)
            await check_add(session)
            await check_stream_progress(session)
            await check_failing_tool(session)
            await check_bad_input(session)
            await check_cancel(session)
            await check_sessions(session, "mcp:")
            await check_binary(session)
            await check_input(session)

    run(body)


def test_http_wrong_token_is_refused(http_worker: Worker) -> None:
    url = f"{base_url(http_worker)}/mcp"
    started = time.monotonic()
    response = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=bearer("wrong"), timeout=30)
    assert response.status_code == 401 and time.monotonic() - started >= 0.9  # the shared penalty
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    response = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=30)
    assert response.status_code == 401

    async def official_client() -> None:
        with pytest.raises(BaseException) as caught:
            async with http_session(http_worker, "wrong"):
                pass
        # the client reports the refusal as an error response; the raw requests above show its 401
        assert "Server returned an error response" in repr(caught.value) or "401" in repr(caught.value)

    run(official_client)


def test_http_host_and_origin_rules_hold(http_worker: Worker) -> None:
    url = f"{base_url(http_worker)}/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    response = httpx.post(url, json=body, headers={**bearer(), "Origin": "https://evil.example"}, timeout=30)
    assert response.status_code == 403
    too_big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"x" * (17 << 20) + b'"}}'
    response = httpx.post(url, content=too_big, headers={**bearer(), "content-type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == -32600


def test_http_disconnect_cancels_the_tool(http_worker: Worker) -> None:
    # the client cuts a call's response stream without notifications/cancelled, its session still open
    url = f"{base_url(http_worker)}/mcp"
    headers = {**bearer(), "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": _init_params()}
    response = httpx.post(url, headers=headers, json=init, timeout=30)
    assert response.status_code == 200
    headers |= {"mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, timeout=30)
    tag = f"mcp-gone-{uuid.uuid4().hex}"
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "endless_stream",
            "arguments": {"tag": tag, "interval_ms": 20},
            "_meta": {"progressToken": 1},
        },
    }
    with httpx.Client(timeout=30) as client, client.stream("POST", url, headers=headers, json=call) as stream:
        lines = stream.iter_lines()
        assert any(line.startswith("data:") and "notifications/progress" in line for line in lines)
    events: dict[str, Any] = {}
    with httpx.Client(base_url=base_url(http_worker), headers=bearer(), timeout=30) as client:
        for _ in range(100):
            events = client.post("/v1/tools/stream_events", json={"tag": tag}).json()["result"]
            if "finally" in events:
                break
            time.sleep(0.05)
    assert "cancel_seen" in events and "finally" in events


# -- the TypeScript SDK ---------------------------------------------------------------------------------------
def _node(*args: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None and (NODE_DIR / "node_modules" / "@modelcontextprotocol").is_dir(), "run scripts/setup"
    result = subprocess.run(
        [node, str(NODE_DIR / "mcp_client.mjs"), *args], capture_output=True, text=True, timeout=90, cwd=NODE_DIR
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _check_node(out: dict[str, Any], grpc_target: str) -> None:
    with Client(grpc_target, timeout=30) as client:
        infos = {info.name: info for info in client.list_tools()}
    tools = {tool["name"]: tool for tool in out["tools"]}
    assert set(tools) == set(infos)
    for name, info in infos.items():
        assert tools[name]["inputSchema"] == expected_input_schema(info)
        assert tools[name]["description"] == info.description
    assert out["add"]["structuredContent"]["result"] == 3
    steps = [json.loads(p["message"])["data"]["step"] for p in out["progress"]]
    assert steps == [1, 2, 3, 4] and [p["progress"] for p in out["progress"]] == [1, 2, 3, 4]
    assert out["stream"]["structuredContent"]["chunk_count"] == 4
    failing = out["failing"]
    assert failing["isError"] and failing["_meta"]["krait/error"]["details"] == {"retry_after": 1.5, "limit": 100}
    assert out["badArgs"]["code"] == -32602 and "argument 'a'" in out["badArgs"]["message"]
    assert out["cancelled"].startswith("rejected") and out["ticks"] >= 2
    assert "cancel_seen" in out["events"] and "finally" in out["events"]


def test_typescript_sdk_over_stdio(worker: Worker) -> None:
    command = {"command": PYTHON, "args": SERVE, "cwd": str(ROOT), "env": {"PATH": os.environ.get("PATH", "")}}
    _check_node(_node("stdio", json.dumps(command)), worker.target)


def test_typescript_sdk_over_streamable_http(http_worker: Worker) -> None:
    _check_node(_node("http", f"{base_url(http_worker)}/mcp", token()), http_worker.target)
    refused = _node("http-wrong-token", f"{base_url(http_worker)}/mcp")
    assert "UNAUTHENTICATED" in refused["connectError"] and "tools" not in refused


def _init_params() -> dict[str, Any]:
    return {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def _readline(stream: Any, timeout: float = 30.0) -> bytes:
    """One line of a subprocess's output, bounded in time."""
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert result and result[0], "no line in time"
    return result[0]
