"""Streams both ways over the local link, driven frame by frame from here as a pool would (docs/link.md): input
credit, INPUT / INPUT_END, HANDLER_CALL / HANDLER_REPLY, against a real ``serve --link`` worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from google.rpc import code_pb2, status_pb2

from python_worker import codec
from python_worker.engine.exchange import WINDOW_BYTES, WINDOW_ITEMS
from python_worker.proto import pb

from .link_support import Kind, LinkProcess


class LinkDriver(LinkProcess):
    """A showcase worker on the link (tests/link_support.py), its frames sorted by call."""

    def __init__(self, *args: str) -> None:
        super().__init__("adapters.showcase:ShowcaseAdapter", "L1", *args)
        self._stash: list[Any] = []
        self._credited: set[int] = set()
        self._next_id = 1

    def open(self, tool: str, args: dict[str, Any], *, method: str = "ExecuteStreamingToolBatched", **kw: Any) -> int:
        call_id, self._next_id = self._next_id, self._next_id + 1
        request = pb.ExecuteToolRequest(tool_name=tool, args_json=json.dumps(args))
        metadata = {"krait-input": "1"} if kw.pop("input", True) else {}
        self.send(
            call_id=call_id,
            kind=Kind.OPEN,
            method=method,
            payload=request.SerializeToString(),
            credit=1 << 22,
            metadata=metadata,
            **kw,
        )
        return call_id

    def await_credit(self, call_id: int) -> None:
        """Wait for the call's first input credit, as a pool does before it sends input (other frames are kept)."""
        if call_id in self._credited:
            return
        seen = []
        while (frame := self.next_frame(call_id)).kind != Kind.CREDIT:
            seen.append(frame)
        self._credited.add(call_id)
        self._stash[:0] = seen

    def items(self, call_id: int, values: list[Any]) -> None:
        self.await_credit(call_id)
        batch = pb.InputBatch(items=[pb.InputItem(data=json.dumps(v).encode()) for v in values])
        self.send(call_id=call_id, kind=Kind.INPUT, payload=batch.SerializeToString())

    def end_input(self, call_id: int, code: int = 0, message: str = "") -> None:
        payload = pb.InputEnd(code=code, message=message).SerializeToString() if code else b""
        self.send(call_id=call_id, kind=Kind.INPUT_END, payload=payload)

    def next_frame(self, call_id: int, timeout: float = 10.0) -> Any:
        for index, frame in enumerate(self._stash):
            if frame.call_id == call_id:
                return self._stash.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            if frame.call_id == call_id:
                return frame
            self._stash.append(frame)

    def until_end(self, call_id: int, timeout: float = 10.0) -> tuple[list[Any], Any]:
        """Every frame of the call up to its END, and the END's status."""
        frames = []
        while (frame := self.next_frame(call_id, timeout)).kind != Kind.END:
            frames.append(frame)
        return frames, status_pb2.Status.FromString(frame.payload)


@pytest.fixture
def link() -> Iterator[LinkDriver]:
    driver = LinkDriver()
    try:
        yield driver
    finally:
        driver.close()


def chunks_of(frames: list[Any]) -> list[Any]:
    return [
        codec.decode_value(chunk.data, chunk.content_type)
        for frame in frames
        if frame.kind == Kind.MESSAGE
        for chunk in pb.ToolChunkBatch.FromString(frame.payload).chunks
        if not chunk.is_final
    ]


def unary_value(frames: list[Any]) -> Any:
    (message,) = [f for f in frames if f.kind == Kind.MESSAGE]
    response = pb.ExecuteToolResponse.FromString(message.payload)
    return codec.decode_value(response.data, response.content_type)


def test_input_is_granted_credit_then_read_and_summed(link: LinkDriver) -> None:
    call = link.open("sum_input", {}, method="ExecuteTool")
    assert link.next_frame(call).kind == Kind.STARTED
    credit = link.next_frame(call)
    link._credited.add(call)
    assert (credit.kind, credit.credit_items, credit.credit) == (Kind.CREDIT, WINDOW_ITEMS, WINDOW_BYTES)
    link.items(call, [{"i": n} for n in range(100)])
    link.end_input(call)
    frames, status = link.until_end(call)
    assert status.code == 0, status.message
    assert unary_value(frames) == sum(range(100))


@pytest.mark.parametrize("tool", ["echo_input", "aecho_input"])
def test_a_tool_answers_each_item_before_the_input_ends(link: LinkDriver, tool: str) -> None:
    call = link.open(tool, {})
    assert link.next_frame(call).kind == Kind.STARTED
    assert link.next_frame(call).kind == Kind.CREDIT
    link._credited.add(call)
    for n in range(3):  # full duplex: each answer comes while the input is still open
        link.items(call, [{"n": n}])
        message = link.next_frame(call)
        assert message.kind == Kind.MESSAGE
        assert [c.data for c in pb.ToolChunkBatch.FromString(message.payload).chunks] == [b'{"n":%d}' % n]
    link.end_input(call)
    _, status = link.until_end(call)
    assert status.code == 0


def test_credit_comes_back_as_the_tool_reads(link: LinkDriver) -> None:
    call = link.open("sum_input", {}, method="ExecuteTool")
    link.next_frame(call)
    granted = link.next_frame(call).credit_items
    link._credited.add(call)
    sent = 0
    for _ in range(6):  # more than a window in all, never more than granted
        n = min(granted, 500)
        link.items(call, [{"i": 1}] * n)
        sent, granted = sent + n, granted - n
        while granted < 500:
            frame = link.next_frame(call)
            assert frame.kind == Kind.CREDIT
            granted += frame.credit_items
    link.end_input(call)
    frames, _ = link.until_end(call)
    assert unary_value(frames) == sent > WINDOW_ITEMS


def test_an_invalid_item_ends_the_call_naming_its_index(link: LinkDriver) -> None:
    call = link.open("sum_input", {}, method="ExecuteTool")
    link.items(call, [{"i": 1}, {"i": 2}, {"i": "three"}])
    _, status = link.until_end(call)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "sum_input: input item 2" in status.message and "integer" in status.message


def test_input_beyond_the_credit_is_refused(link: LinkDriver) -> None:
    call = link.open("sum_input", {}, method="ExecuteTool")
    link.items(call, [{"i": 1}] * (WINDOW_ITEMS + 1))
    _, status = link.until_end(call)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "beyond the credit" in status.message


def test_input_for_a_tool_that_reads_none_is_refused(link: LinkDriver) -> None:
    call = link.open("add", {"a": 1, "b": 2}, method="ExecuteTool")
    _, status = link.until_end(call)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "add reads no input stream" in status.message


def test_an_input_tool_without_input_is_refused_unless_given_an_array(link: LinkDriver) -> None:
    call = link.open("sum_input", {}, method="ExecuteTool", input=False)
    _, status = link.until_end(call)
    assert status.code == code_pb2.FAILED_PRECONDITION and "reads an input stream" in status.message
    call = link.open("sum_input", {"items": [{"i": 4}, {"i": 5}]}, method="ExecuteTool", input=False)
    frames, status = link.until_end(call)
    assert status.code == 0 and unary_value(frames) == 9


def test_a_failed_input_raises_input_error_in_the_tool(link: LinkDriver) -> None:
    call = link.open("take_input", {"n": 10, "tag": "failed"}, method="ExecuteTool")
    link.items(call, [1, 2])
    link.end_input(call, code_pb2.UNKNOWN, "** (RuntimeError) the enumerable broke")
    _, status = link.until_end(call)
    assert status.code == code_pb2.UNKNOWN and "the enumerable broke" in status.message
    events = link.open("stream_events", {"tag": "failed"}, method="ExecuteTool", input=False)
    frames, _ = link.until_end(events)
    assert {"input_error", "finally"} <= set(unary_value(frames))


def test_a_tool_that_returns_early_stops_the_input(link: LinkDriver) -> None:
    call = link.open("take_input", {"n": 2}, method="ExecuteTool")
    link.items(call, [1, 2, 3, 4])
    frames, status = link.until_end(call)
    assert status.code == 0 and unary_value(frames) == [1, 2]
    link.send(call_id=call, kind=Kind.INPUT, payload=b"")  # crosses the call's end: ignored
    assert unary_value(link.until_end(link.open("add", {"a": 1, "b": 1}, method="ExecuteTool", input=False))[0]) == 2


def test_cancel_wakes_a_tool_waiting_for_input(link: LinkDriver) -> None:
    call = link.open("hold_input", {"tag": "waiting"})
    link.items(call, ["x"])
    assert link.next_frame(call).kind == Kind.STARTED
    link.send(call_id=call, kind=Kind.CANCEL)
    _, status = link.until_end(call)
    assert status.code == code_pb2.CANCELLED
    events = link.open("stream_events", {"tag": "waiting"}, method="ExecuteTool", input=False)
    assert "finally" in unary_value(link.until_end(events)[0])


def test_binary_items(link: LinkDriver) -> None:
    call = link.open("array_input", {})
    link.await_credit(call)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4)]
    batch = pb.InputBatch(items=[pb.InputItem(data=codec.encode_npy(a), content_type=codec.NPY) for a in arrays])
    link.send(call_id=call, kind=Kind.INPUT, payload=batch.SerializeToString())
    link.end_input(call)
    frames, status = link.until_end(call)
    assert status.code == 0
    assert chunks_of(frames) == [{"shape": [2, 3], "sum": 15.0}, {"shape": [4], "sum": 4.0}]
    call = link.open("array_input", {})
    link.items(call, [[1, 2]])  # JSON where arrays are wanted
    _, status = link.until_end(call)
    assert status.code == code_pb2.INVALID_ARGUMENT and "input item 0: expected application/x-npy" in status.message


def test_large_items_arrive_whole_and_in_order(link: LinkDriver) -> None:
    # frames of 64 KiB and more are read without protobuf (link_io.InputFrame): same items, same order
    call = link.open("array_input", {})
    link.await_credit(call)
    arrays = [np.full(1 << 18, k, dtype=np.float32) for k in (1, 2, 3)]  # 1 MiB each, one frame
    batch = pb.InputBatch(items=[pb.InputItem(data=codec.encode_npy(a), content_type=codec.NPY) for a in arrays])
    link.send(call_id=call, kind=Kind.INPUT, payload=batch.SerializeToString())
    link.end_input(call)
    frames, status = link.until_end(call)
    assert status.code == 0, status.message
    assert chunks_of(frames) == [{"shape": [1 << 18], "sum": float(k << 18)} for k in (1, 2, 3)]
    call = link.open("bytes_input", {}, method="ExecuteTool")
    link.await_credit(call)
    blobs = [b"x" * 100_000, b"", b"y" * 7]
    batch = pb.InputBatch(items=[pb.InputItem(data=b, content_type=codec.BYTES) for b in blobs])
    link.send(call_id=call, kind=Kind.INPUT, payload=batch.SerializeToString())
    link.end_input(call)
    frames, status = link.until_end(call)
    assert status.code == 0 and unary_value(frames) == 100_007
    # a large batch of JSON items, one of them bad: its index, as for a small batch
    call = link.open("sum_input", {}, method="ExecuteTool")
    link.items(call, [{"i": n, "pad": "z" * 100} for n in range(900)])
    _, status = link.until_end(call)
    assert status.code == code_pb2.INVALID_ARGUMENT, status.message
    call = link.open("take_input", {"n": 1000}, method="ExecuteTool")
    values: list[Any] = [{"k": "v" * 100}] * 999 + [None]
    link.items(call, values)
    link.end_input(call)
    frames, status = link.until_end(call)
    assert status.code == 0 and unary_value(frames) == values


@pytest.mark.parametrize("tool", ["ask", "aask"])
def test_handler_calls_reach_the_caller_and_its_reply_the_tool(link: LinkDriver, tool: str) -> None:
    call = link.open(tool, {"name": "double", "args": {"x": 21}}, method="ExecuteTool", input=False)
    assert link.next_frame(call).kind == Kind.STARTED
    frame = link.next_frame(call)
    assert frame.kind == Kind.HANDLER_CALL
    asked = pb.HandlerCall.FromString(frame.payload)
    assert (asked.name, json.loads(asked.args_json)) == ("double", {"x": 21})
    reply = pb.HandlerReply(id=asked.id, data=b"42")
    link.send(call_id=call, kind=Kind.HANDLER_REPLY, payload=reply.SerializeToString())
    frames, status = link.until_end(call)
    assert status.code == 0 and unary_value(frames) == 42

    call = link.open(tool, {"name": "nope"}, method="ExecuteTool", input=False)
    link.next_frame(call)
    asked = pb.HandlerCall.FromString(link.next_frame(call).payload)
    failure = pb.HandlerFailure(type="HandlerNotFound", message="no handler 'nope'")
    link.send(
        call_id=call, kind=Kind.HANDLER_REPLY, payload=pb.HandlerReply(id=asked.id, error=failure).SerializeToString()
    )
    frames, _ = link.until_end(call)
    assert unary_value(frames) == {"error": {"type": "HandlerNotFound", "message": "no handler 'nope'"}}

    call = link.open(tool, {"name": "slow", "timeout": 0.2}, method="ExecuteTool", input=False)
    frames, _ = link.until_end(call)  # never answered
    assert unary_value(frames)["error"]["type"] == "HandlerTimeout"


def test_handler_calls_from_a_stream(link: LinkDriver) -> None:
    call = link.open("ask_stream", {"name": "square", "count": 3}, input=False)
    got = []
    while (frame := link.next_frame(call)).kind != Kind.END:
        if frame.kind == Kind.HANDLER_CALL:
            asked = pb.HandlerCall.FromString(frame.payload)
            value = json.loads(asked.args_json)["i"] ** 2
            reply = pb.HandlerReply(id=asked.id, data=json.dumps(value).encode())
            link.send(call_id=call, kind=Kind.HANDLER_REPLY, payload=reply.SerializeToString())
        elif frame.kind == Kind.MESSAGE:
            got += chunks_of([frame])
    assert status_pb2.Status.FromString(frame.payload).code == 0
    assert got == [0, 1, 4]
