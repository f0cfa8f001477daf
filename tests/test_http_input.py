"""Streams both ways over the HTTP front, against a real worker: input streams and handler calls on the WebSocket
(JSON items, array and bytes items as binary frames, credit, the input's end and failure, the client leaving,
handler values, failures and timeouts), and a finite JSON array as input over POST and SSE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import ClientConnection, connect

from python_worker.engine.exchange import WINDOW_BYTES, WINDOW_ITEMS  # the window the gate mirrors

from .http_support import bearer, http_worker, recv, stream_events, tool_events, until_end
from .support import eventually
from .workers import Worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Worker, httpx.Client]]:
    with http_worker("--worker-id", "input-worker") as pair:
        yield pair


@pytest.fixture
def ws(served: tuple[Worker, httpx.Client]) -> Iterator[ClientConnection]:
    worker = served[0]
    url = f"ws://{worker.host}:{worker.info['http_port']}/v1/ws"
    with connect(url, additional_headers=bearer(), open_timeout=10, max_size=None) as socket:
        yield socket


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def binary(header: dict[str, Any], raw: bytes) -> bytes:
    """A binary input frame: 4-byte big-endian header length, the JSON header, the raw bytes."""
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "big") + head + raw


class Sender:
    """A well-behaved client of one call: sends input only within the credit it was granted, counting each
    frame as the protocol says (its items, and bytes: a text frame's UTF-8 length, a binary frame's raw bytes)."""

    def __init__(self, ws: ClientConnection, call_id: str) -> None:
        self.ws = ws
        self.call_id = call_id
        self.items = 0
        self.bytes = 0
        self.grants: list[tuple[int, int]] = []
        self.events: list[dict[str, Any]] = []  # the call's other events, in order

    def take(self, frame: dict[str, Any]) -> None:
        assert frame["id"] == self.call_id, frame
        if frame["event"] == "credit":
            self.grants.append((frame["items"], frame["bytes"]))
            self.items += frame["items"]
            self.bytes += frame["bytes"]
        else:
            self.events.append(frame)

    def wait_credit(self, items: int = 1) -> None:
        while self.items < items or self.bytes <= 0:
            assert not self.ended, self.events
            self.take(recv(self.ws))

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1]["event"] in ("final", "result", "error")

    def send_json(self, items: list[Any]) -> None:
        self.wait_credit(len(items))
        text = json.dumps({"op": "input", "id": self.call_id, "items": items})
        self.items -= len(items)
        self.bytes -= len(text.encode())
        self.ws.send(text)

    def send_binary(self, header: dict[str, Any], raw: bytes) -> None:
        self.wait_credit()
        frame = binary({"op": "input", "id": self.call_id, **header}, raw)
        self.items -= 1
        self.bytes -= len(raw)
        self.ws.send(frame)

    def end(self, error: str | None = None) -> list[dict[str, Any]]:
        """Send input_end; the call's events up to its last."""
        send(self.ws, op="input_end", id=self.call_id, **({"error": error} if error is not None else {}))
        while not self.ended:
            self.take(recv(self.ws))
        return self.events


def start(ws: ClientConnection, call_id: str, tool: str, args: dict[str, Any] | None = None) -> Sender:
    send(ws, op="call", id=call_id, tool=tool, args=args or {}, input=True)
    return Sender(ws, call_id)


def test_json_items_within_the_credit(ws: ClientConnection) -> None:
    sender = start(ws, "s", "sum_input")
    sender.wait_credit()
    assert sender.grants == [(WINDOW_ITEMS, WINDOW_BYTES)]
    total = 0
    for first in range(0, 5000, 250):  # more than a window of items: credit comes back as the tool reads
        items = [{"i": i} for i in range(first, first + 250)]
        total += sum(item["i"] for item in items)
        sender.send_json(items)
    [result] = sender.end()
    assert (result["event"], result["result"]) == ("result", total)
    assert len(sender.grants) > 1 and all(items > 0 and nbytes > 0 for items, nbytes in sender.grants)


@pytest.mark.parametrize("tool", ["echo_input", "aecho_input"])
def test_full_duplex_echo(ws: ClientConnection, tool: str) -> None:
    sender = start(ws, "e", tool)
    for n in range(5):
        sender.send_json([{"n": n, "text": "héllo"}])
        while not sender.events:  # each item comes back before the next is sent
            sender.take(recv(ws))
        chunk = sender.events.pop()
        assert (chunk["event"], chunk["chunk"]["data"]) == ("chunk", {"n": n, "text": "héllo"})
    events = sender.end()
    assert events[-1]["event"] == "final"


def test_arrays_as_binary_frames_beyond_the_byte_window(ws: ClientConnection) -> None:
    # 96 KiB frames: the byte window (16 MiB), not the item window, is what runs out, and the worker's count of
    # an array item (an .npy payload with its header) is not the client's (its raw bytes): never refused for it
    sender = start(ws, "a", "array_input")
    rng = np.random.default_rng(7)
    frames = [rng.standard_normal((128, 192), dtype=np.float32) for _ in range(4)]
    sent = 0
    for n in range(240):  # ~22 MiB: more than the byte window
        sender.send_binary({"dtype": "<f4", "shape": [128, 192]}, frames[n % 4].tobytes())
        sent += 1
    events = sender.end()
    chunks = [e["chunk"]["data"] for e in events if e["event"] == "chunk"]
    assert events[-1]["event"] == "final", events[-1]
    assert len(chunks) == sent
    for n, chunk in enumerate(chunks):
        assert chunk["shape"] == [128, 192]
        assert chunk["sum"] == pytest.approx(float(frames[n % 4].sum()), rel=1e-5)
    assert len(sender.grants) > 2


def test_an_array_item_of_other_dtypes_and_shapes(ws: ClientConnection) -> None:
    sender = start(ws, "a", "array_input")
    sender.send_binary({"dtype": "<i2", "shape": [2, 3]}, np.arange(6, dtype="<i2").tobytes())
    sender.send_binary({"dtype": "<f8", "shape": [0]}, b"")
    sender.send_binary({"dtype": "<f4", "shape": [], "content_type": "application/x-npy"}, np.float32(2.5).tobytes())
    events = sender.end()
    assert [e["chunk"]["data"] for e in events[:3]] == [
        {"shape": [2, 3], "sum": 15.0},
        {"shape": [0], "sum": 0.0},
        {"shape": [], "sum": 2.5},
    ]


def test_bytes_items(ws: ClientConnection) -> None:
    sender = start(ws, "b", "bytes_input")
    for size in (0, 10, 70_000):  # the last one is parsed off the event loop
        sender.send_binary({"content_type": "application/octet-stream"}, bytes(size))
    [result] = sender.end()
    assert result["result"] == 70_010


def test_an_invalid_item_ends_the_call_naming_its_index(ws: ClientConnection) -> None:
    sender = start(ws, "p", "point_input")
    sender.send_json([{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    sender.send_json([{"x": "far", "y": 1}])
    while not sender.ended:
        sender.take(recv(ws))
    error = sender.events[-1]["error"]
    assert error["code"] == "INVALID_ARGUMENT", error
    assert "point_input: input item 2" in error["message"], error
    # the socket goes on, and frames crossing the call's end are dropped, not answered
    send(ws, op="input", id="p", items=[{"x": 1, "y": 1}])
    send(ws, op="input_end", id="p")
    send(ws, op="call", id="after", tool="add", args={"a": 1, "b": 2})
    assert until_end(ws, "after")[0]["result"] == 3


def test_a_wrong_binary_item_is_refused(ws: ClientConnection) -> None:
    sender = start(ws, "b", "bytes_input")
    sender.send_binary({"dtype": "<f4", "shape": [2]}, bytes(8))  # an array where bytes are read
    events = sender.end()
    assert events[-1]["error"]["code"] == "INVALID_ARGUMENT"
    assert "bytes_input: input item 0" in events[-1]["error"]["message"]


def test_input_end_with_an_error_raises_input_error_in_the_tool(
    ws: ClientConnection, served: tuple[Worker, httpx.Client]
) -> None:
    sender = start(ws, "t", "take_input", {"n": 10, "tag": "http-input-error"})
    sender.send_json([1, 2])
    events = sender.end(error="the microphone went away")
    assert events[-1]["event"] == "error", events
    recorded = tool_events(served[1], "http-input-error")
    assert "input_error" in recorded and "finally" in recorded


def test_a_tool_that_returns_early_takes_no_more(ws: ClientConnection) -> None:
    sender = start(ws, "t", "take_input", {"n": 2})
    sender.send_json([1, 2, 3, 4])
    while not sender.ended:
        sender.take(recv(ws))
    assert sender.events[-1]["result"] == [1, 2]
    # more input for the ended call is dropped quietly; a credit never follows the call's last event
    send(ws, op="input", id="t", items=[5])
    send(ws, op="input_end", id="t")
    send(ws, op="call", id="after", tool="add", args={"a": 2, "b": 2})
    assert until_end(ws, "after")[0]["result"] == 4


def test_a_client_that_leaves_mid_input_stops_the_tool(served: tuple[Worker, httpx.Client]) -> None:
    worker, client = served
    url = f"ws://{worker.host}:{worker.info['http_port']}/v1/ws"
    with connect(url, additional_headers=bearer(), open_timeout=10) as socket:
        sender = start(socket, "h", "hold_input", {"tag": "http-input-gone"})
        sender.send_json([1, 2, 3])
        while len(sender.events) < 3:
            sender.take(recv(socket))
    eventually(lambda: "finally" in tool_events(client, "http-input-gone"), timeout=10)


def test_input_beyond_the_credit_is_refused(ws: ClientConnection) -> None:
    sender = start(ws, "s", "sum_input")
    sender.wait_credit()
    send(ws, op="input", id="s", items=[{"i": 1}] * (sender.items + 1))
    while not sender.ended:
        sender.take(recv(ws))
    error = sender.events[-1]["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "beyond the credit" in error["message"], error


def test_input_for_a_tool_that_reads_none_and_a_tool_called_without_input(ws: ClientConnection) -> None:
    send(ws, op="call", id="x", tool="add", args={"a": 1, "b": 2}, input=True)
    [error] = until_end(ws, "x")
    assert error["error"]["code"] == "INVALID_ARGUMENT" and "reads no input stream" in error["error"]["message"]
    send(ws, op="call", id="y", tool="sum_input", args={})
    [error] = until_end(ws, "y")
    assert (error["error"]["code"], error["error"]["type"]) == ("FAILED_PRECONDITION", "WrongRpc"), error
    # without "input": true the input may still come whole in the arguments
    send(ws, op="call", id="z", tool="sum_input", args={"items": [{"i": 4}, {"i": 5}]})
    assert until_end(ws, "z")[0]["result"] == 9


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"op": "input", "id": "nobody", "items": [1]}, "no call 'nobody' in flight"),
        ({"op": "input", "id": "m", "items": 3}, "'items': a JSON array"),
        ({"op": "input_end", "id": "m", "error": 7}, "'error' must be a string"),
        ({"op": "handler_reply", "id": "m", "call": "one"}, "needs 'call'"),
        ({"op": "handler_reply", "id": "m", "call": 1, "error": "bad"}, "'error' must be"),
        ({"op": "call", "id": "m", "tool": "sum_input", "input": "yes"}, "'input' must be true"),
    ],
)
def test_malformed_input_frames(ws: ClientConnection, frame: dict[str, Any], message: str) -> None:
    ws.send(json.dumps(frame))
    error = recv(ws)
    assert (error["event"], error["error"]["code"]) == ("error", "INVALID_ARGUMENT"), error
    assert message in error["error"]["message"], error
    send(ws, op="call", id="ok", tool="add", args={"a": 1, "b": 2})
    assert until_end(ws, "ok")[0]["result"] == 3


@pytest.mark.parametrize(
    ("header", "raw", "message"),
    [
        ({"op": "call", "id": "m"}, b"", "binary frames are not accepted except as input items"),
        ({"op": "input", "id": "m"}, b"xx", "needs 'dtype' and 'shape'"),
        ({"op": "input", "id": "m", "dtype": "|O", "shape": [1]}, bytes(8), "dtype object"),
        ({"op": "input", "id": "m", "dtype": "nope", "shape": [1]}, bytes(8), "is not a NumPy dtype"),
        ({"op": "input", "id": "m", "dtype": "<f4", "shape": [3]}, bytes(8), "needs 12 data bytes"),
        ({"op": "input", "id": "m", "dtype": "<f4", "shape": [-1]}, bytes(8), "non-negative integers"),
    ],
)
def test_malformed_binary_frames(ws: ClientConnection, header: dict[str, Any], raw: bytes, message: str) -> None:
    ws.send(binary(header, raw))
    error = recv(ws)
    assert (error["id"], error["event"], error["error"]["code"]) == ("m", "error", "INVALID_ARGUMENT"), error
    assert message in error["error"]["message"], error


@pytest.mark.parametrize("tool", ["ask", "aask"])
def test_handler_calls_answered_from_the_socket(ws: ClientConnection, tool: str) -> None:
    send(ws, op="call", id="v", tool=tool, args={"name": "lookup", "args": {"key": "a"}})
    call = recv(ws)
    assert (call["id"], call["event"], call["name"], call["args"], call["timeout_ms"]) == (
        "v",
        "handler_call",
        "lookup",
        {"key": "a"},
        0,
    )
    send(ws, op="handler_reply", id="v", call=call["call"], value={"found": [1, 2]})
    assert until_end(ws, "v")[0]["result"] == {"found": [1, 2]}

    send(ws, op="call", id="f", tool=tool, args={"name": "missing"})
    call = recv(ws)
    assert call["args"] == {}
    send(ws, op="handler_reply", id="f", call=call["call"], error={"type": "HandlerNotFound", "message": "no such"})
    assert until_end(ws, "f")[0]["result"] == {"error": {"type": "HandlerNotFound", "message": "no such"}}

    send(ws, op="call", id="t", tool=tool, args={"name": "slow", "timeout": 0.2})
    call = recv(ws)
    assert call["timeout_ms"] == 200
    [result] = until_end(ws, "t")  # never answered
    assert result["result"]["error"]["type"] == "HandlerTimeout"
    send(ws, op="handler_reply", id="t", call=call["call"], value=1)  # too late: dropped


def test_handler_calls_of_a_stream_and_the_default_error_type(ws: ClientConnection) -> None:
    send(ws, op="call", id="s", tool="ask_stream", args={"name": "double", "count": 3})
    values = []
    while True:
        frame = recv(ws)
        if frame["event"] == "handler_call":
            send(ws, op="handler_reply", id="s", call=frame["call"], value=frame["args"]["i"] * 2)
        elif frame["event"] == "chunk":
            values.append(frame["chunk"]["data"])
        else:
            assert frame["event"] == "final", frame
            break
    assert values == [0, 2, 4]
    send(ws, op="call", id="e", tool="ask", args={"name": "boom"})
    call = recv(ws)
    send(ws, op="handler_reply", id="e", call=call["call"], error={"message": "it broke"})
    assert until_end(ws, "e")[0]["result"] == {"error": {"type": "HandlerFailed", "message": "it broke"}}


def test_post_and_sse_take_the_input_as_a_json_array(served: tuple[Worker, httpx.Client]) -> None:
    client = served[1]
    response = client.post("/v1/tools/sum_input", json={"items": [{"i": 1}, {"i": 2}, {"i": 39}]})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == 42
    response = client.post("/v1/tools/point_input", json={"points": [{"x": 1, "y": 2}, {"x": "no", "y": 1}]})
    assert response.status_code == 400 and "point_input: input item 1" in response.json()["error"]["message"]
    refused = client.post("/v1/tools/sum_input", json={})
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["type"]) == ("FAILED_PRECONDITION", "WrongRpc")
    # no handler calls over POST
    unavailable = client.post("/v1/tools/ask", json={"name": "lookup"})
    assert unavailable.json()["result"]["error"]["type"] == "HandlersUnavailable"
    events = stream_events(client, "echo_input", {"items": [1, "two", {"three": 3}]})
    assert [(e.event, e.data["data"]) for e in events[:3]] == [("chunk", 1), ("chunk", "two"), ("chunk", {"three": 3})]
    assert events[-1].event == "final"
    listing = {tool["name"]: tool for tool in client.get("/v1/tools").json()["tools"]}
    assert listing["sum_input"]["input_param"] == "items"
    assert listing["sum_input"]["input"]["type"] == "object"
    assert "items" not in listing["sum_input"]["parameters"].get("properties", {})
    assert listing["add"]["input"] is None and listing["add"]["input_param"] is None
