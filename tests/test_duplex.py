"""ExecuteToolDuplex against real workers: input streams into sync and async tools, credit, handler calls, the
ends of a call (invalid items, a failing input, cancel, disconnect, deadline), and the protocol's refusals.

Through Krait's own clients (``Client``/``AsyncClient`` with ``input=`` and ``handlers=``), and through a raw
gRPC stub where the wire itself is the point (credit, the first message, a second start).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from python_worker.aio_client import AsyncClient
from python_worker.client import Client, DeadlineExceededError, InvalidArgumentsError, KraitError
from python_worker.engine.exchange import WINDOW_BYTES, WINDOW_ITEMS
from python_worker.errors import tool_error_from_rpc_error
from python_worker.proto import pb, pb_grpc

from .support import eventually, insecure_channel
from .workers import Worker, running_worker

DUPLEX = "/krait.v1.ToolWorker/ExecuteToolDuplex"
PROMPT = 5.0  # "promptly": well within this, on a loaded machine


@pytest.fixture(scope="module")
def one_slot() -> Iterator[Worker]:
    """A worker with one call slot: a call that did not free it blocks the next."""
    with running_worker("adapters.showcase:ShowcaseAdapter", "--max-calls", "1", "--worker-id", "one-slot") as w:
        yield w


def _events(client: Client, tag: str, wait_for: str) -> dict[str, float]:
    def seen() -> dict[str, float]:
        try:
            events: dict[str, float] = client.call("stream_events", {"tag": tag})
        except KraitError as exc:  # on a one-slot worker, a cancelled call may hold the slot a moment longer
            assert exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message
            raise
        assert wait_for in events, f"{tag}: no {wait_for!r} event yet, got {events}"
        return events

    return eventually(seen, timeout=PROMPT)


class Counted:
    """An endless input counting what was pulled from it, and whether it was closed."""

    def __init__(self, item: Any = None) -> None:
        self.pulled = 0
        self.closed = threading.Event()
        self._item = item

    def __iter__(self) -> Iterator[Any]:
        try:
            for i in itertools.count():
                self.pulled += 1
                yield {"i": i} if self._item is None else self._item
        finally:
            self.closed.set()


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- input ----------------------------------------------------------------------------------------------------
def test_sync_and_async_tools_read_the_whole_input(client: Client) -> None:
    assert client.call("sum_input", input=({"i": i} for i in range(5000))) == sum(range(5000))
    assert client.call("acount_input", input=iter(range(3000))) == 3000
    assert client.call("sum_input", input=[]) == 0  # an empty input ends at once
    assert client.call("bytes_input", input=[b"abc", bytearray(b"de"), memoryview(b"f")]) == 6
    assert client.call("point_input", input=[{"x": 1.5, "y": 2}, {"x": 3, "y": 1}]) == 6.0
    frames = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(WINDOW_BYTES // 8, np.float64)]
    out = [c.data for c in client.stream("array_input", input=frames)][:-1]  # the last: the synthetic final
    assert out == [{"shape": [2, 3], "sum": 15.0}, {"shape": [WINDOW_BYTES // 8], "sum": WINDOW_BYTES / 8}]


def test_async_client_takes_async_and_sync_iterables(worker: Worker) -> None:
    async def items(n: int) -> AsyncIterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i}
            if i % 500 == 0:
                await asyncio.sleep(0)

    async def main() -> None:
        async with AsyncClient(worker.target, timeout=30) as client:
            assert await client.call("sum_input", input=items(4000)) == sum(range(4000))
            assert await client.call("acount_input", input=items(2500)) == 2500
            assert await client.call("sum_input", input=[{"i": 2}, {"i": 3}]) == 5
            echoed = [c.data async for c in client.stream("aecho_input", input=items(300))]
            assert echoed[:-1] == [{"i": i} for i in range(300)]

    _run(main())


@pytest.mark.parametrize("tool", ["echo_input", "aecho_input"])
def test_echo_is_full_duplex_and_in_order(client: Client, tool: str) -> None:
    # each item is produced only once the echo of the one before it has come back: a transport that waited
    # for the whole input (or buffered the output) would hang here
    echoed: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def items() -> Iterator[Any]:
        for i in range(20):
            yield {"n": i, "blob": "x" * i}
            assert echoed.get(timeout=PROMPT) == {"n": i, "blob": "x" * i}

    chunks = client.stream(tool, input=items())
    for chunk in chunks:
        if not chunk.is_final:
            echoed.put(chunk.data)
    assert echoed.empty()


def test_large_items_and_chunks_travel_whole(client: Client) -> None:
    text = "x" * (1 << 20)  # a 1 MiB JSON item, echoed as a chunk framed by hand on its way out
    out = [c.data for c in client.stream("echo_input", input=[text, {"small": True}, text[:40000]])]
    assert out[:3] == [text, {"small": True}, text[:40000]]
    frame = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)  # a 4 MiB item
    assert next(c.data for c in client.stream("array_input", input=[frame])) == {
        "shape": [1024, 1024],
        "sum": float(frame.sum()),
    }


def test_an_endless_input_is_pulled_only_as_the_tool_reads(client: Client) -> None:
    # a sync tool that returns after 5 items: nothing beyond the first window is ever pulled
    endless = Counted()
    assert client.call("take_input", {"n": 5}, input=endless) == [{"i": i} for i in range(5)]
    assert 5 <= endless.pulled <= WINDOW_ITEMS
    assert endless.closed.wait(PROMPT)  # the client closed the input once the call was over
    # an async tool echoing to a caller that stops reading: backpressure end to end, the input stops too
    endless = Counted()
    with client.stream("aecho_input", input=endless) as chunks:
        for _ in range(10):
            next(chunks)

        def settled() -> bool:
            before = endless.pulled
            time.sleep(0.3)
            return endless.pulled == before

        eventually(settled, timeout=PROMPT * 2, what="the input to stop being pulled")
        assert endless.pulled < 100_000  # the output's buffers and one input window, not the endless input
    assert endless.closed.wait(PROMPT)


def test_the_byte_credit_bounds_large_items(client: Client) -> None:
    endless = Counted(item="x" * (1 << 20))  # 1 MiB items: the byte window (16 MiB) runs out first
    assert len(client.call("take_input", {"n": 1}, input=endless)) == 1
    assert endless.pulled <= WINDOW_BYTES // (1 << 20) + 1  # the last item may overshoot the bytes


def test_an_invalid_item_ends_the_call_naming_its_index(client: Client) -> None:
    with pytest.raises(InvalidArgumentsError, match=r"sum_input: input item 2: .*valid integer"):
        client.call("sum_input", input=[{"i": 1}, {"i": 2}, {"i": "three"}, {"i": 4}])
    with pytest.raises(InvalidArgumentsError, match=r"point_input: input item 1: \['y'\]"):
        client.call("point_input", input=[{"x": 1, "y": 2}, {"x": 1}])
    with pytest.raises(InvalidArgumentsError, match=r"bytes_input: input item 0: expected application/octet"):
        client.call("bytes_input", input=[{"not": "bytes"}])
    with (
        pytest.raises(InvalidArgumentsError, match=r"array_input: input item 1: "),
        client.stream("array_input", input=[np.zeros(3), b"raw"]) as chunks,
    ):
        list(chunks)
    assert client.call("sum_input", input=[{"i": 1}]) == 1  # the worker is fine


def test_a_failing_input_reaches_the_tool_and_the_caller_raises_it(client: Client) -> None:
    def failing() -> Iterator[Any]:
        yield 1
        yield 2
        raise RuntimeError("the sensor unplugged")

    with pytest.raises(RuntimeError, match="the sensor unplugged"):
        client.call("take_input", {"n": 10, "tag": "duplex-input-error"}, input=failing())
    events = _events(client, "duplex-input-error", "finally")
    assert "input_error" in events  # the tool's iterator raised InputError


def test_a_failing_async_input_is_raised_by_the_async_client(worker: Worker) -> None:
    async def failing() -> AsyncIterator[Any]:
        yield 1
        raise ValueError("async source broke")

    async def main() -> None:
        async with AsyncClient(worker.target, timeout=30) as client:
            with pytest.raises(ValueError, match="async source broke"):
                await client.call("acount_input", input=failing())
            with pytest.raises(ValueError, match="async source broke"):
                async for _ in client.stream("aecho_input", input=failing()):
                    pass
            assert await client.call("acount_input", input=[1, 2]) == 2

    _run(main())


def test_input_must_be_a_stream_of_items(client: Client) -> None:
    for wrong in ("abc", {"i": 1}, b"raw", np.zeros(3)):
        with pytest.raises(TypeError, match="wrap a single item in a list"):
            client.call("acount_input", input=wrong)
    with pytest.raises(TypeError, match="not iterable"):
        client.call("acount_input", input=42)  # type: ignore[arg-type]


def test_an_item_that_cannot_be_encoded_fails_the_input(client: Client) -> None:
    with pytest.raises(Exception, match="not a finite number"):
        client.call("take_input", {"n": 3, "tag": "duplex-nan"}, input=[1.0, float("nan")])
    assert "input_error" in _events(client, "duplex-nan", "finally")


# -- the call's end: cancel, disconnect, deadline ---------------------------------------------------------------
def _next_call_works(worker: Worker) -> None:
    with Client(worker.target, timeout=10) as client:

        def add() -> bool:
            try:
                return bool(client.call("add", {"a": 1, "b": 2}) == 3)
            except KraitError as exc:  # a call still holding the only slot: refused at once
                assert exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message
                raise

        eventually(add, timeout=PROMPT, what="the slot to be free again")


def test_cancel_runs_the_tools_finally_and_frees_the_slot(one_slot: Worker) -> None:
    with Client(one_slot.target, timeout=30) as client:
        chunks = client.stream("hold_input", {"tag": "duplex-cancel"}, input=Counted())
        assert next(chunks).data == 1
        chunks.close()
        _events(client, "duplex-cancel", "finally")
    _next_call_works(one_slot)


def test_disconnect_runs_the_tools_finally_and_frees_the_slot(one_slot: Worker) -> None:
    blocked = threading.Event()

    def one_then_wait() -> Iterator[Any]:
        yield "first"
        blocked.wait(PROMPT * 2)  # the tool waits for its next item when the client goes

    client = Client(one_slot.target, timeout=30)
    chunks = client.stream("hold_input", {"tag": "duplex-disconnect"}, input=one_then_wait())
    assert next(chunks).data == 1
    client.close()  # the connection goes while the tool waits for input
    blocked.set()
    with Client(one_slot.target, timeout=10) as other:
        _events(other, "duplex-disconnect", "finally")
    _next_call_works(one_slot)


def test_async_client_cancel_frees_the_slot(one_slot: Worker) -> None:
    async def endless() -> AsyncIterator[Any]:
        for i in itertools.count():
            yield i
            await asyncio.sleep(0.001)

    async def main() -> None:
        async with AsyncClient(one_slot.target, timeout=30) as client:
            chunks = client.stream("aecho_input", input=endless())
            assert (await anext(chunks)).data == 0
            await chunks.aclose()

    _run(main())
    _next_call_works(one_slot)


def test_the_deadline_covers_the_whole_exchange(one_slot: Worker) -> None:
    release = threading.Event()

    def one_then_stall() -> Iterator[Any]:
        yield 1
        release.wait(PROMPT * 2)

    with Client(one_slot.target) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.call("take_input", {"n": 3, "tag": "duplex-deadline"}, input=one_then_stall(), timeout=1.0)
        assert time.monotonic() - started < 1.0 + PROMPT
        release.set()
        _next_call_works(one_slot)  # the worker learns of the deadline a moment after the client
        # a handler slower than the call's deadline: the deadline still ends the call
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.call("ask", {"name": "slow"}, handlers={"slow": lambda args: time.sleep(3)}, timeout=1.0)
        assert time.monotonic() - started < 3.0
    with Client(one_slot.target, timeout=10) as other:
        _events(other, "duplex-deadline", "finally")
    _next_call_works(one_slot)


# -- handlers -----------------------------------------------------------------------------------------------------
def _boom(args: Any) -> Any:
    raise LookupError(f"no row {args['id']}")


@pytest.mark.parametrize("tool", ["ask", "aask"])
def test_handlers_value_raise_missing_timeout(client: Client, tool: str) -> None:
    handlers = {"double": lambda args: args["x"] * 2, "boom": _boom, "slow": lambda args: time.sleep(2) or 1}
    assert client.call(tool, {"name": "double", "args": {"x": 21}}, handlers=handlers) == 42
    assert client.call(tool, {"name": "boom", "args": {"id": 7}}, handlers=handlers) == {
        "error": {"type": "HandlerFailed", "message": "LookupError: no row 7"}
    }
    missing = client.call(tool, {"name": "nope"}, handlers=handlers)
    assert missing["error"]["type"] == "HandlerNotFound" and "nope" in missing["error"]["message"]
    started = time.monotonic()
    timed_out = client.call(tool, {"name": "slow", "timeout": 0.3}, handlers=handlers)
    assert timed_out["error"]["type"] == "HandlerTimeout" and time.monotonic() - started < 2.0
    # binary values come back as they are
    assert client.call(tool, {"name": "blob"}, handlers={"blob": lambda args: b"\x00\x01"}) == b"\x00\x01"


def test_a_streaming_tool_calls_handlers_between_its_chunks(client: Client) -> None:
    chunks = client.stream("ask_stream", {"name": "square", "count": 4}, handlers={"square": lambda a: a["i"] ** 2})
    assert [c.data for c in chunks][:-1] == [0, 1, 4, 9]


def test_async_client_handlers_plain_and_async(worker: Worker) -> None:
    cancelled = asyncio.Event()

    async def slow(args: Any) -> Any:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()  # stopped at the tool's timeout
            raise

    async def lookup(args: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"found": args}

    async def main() -> None:
        handlers = {"lookup": lookup, "plain": lambda args: "plain", "boom": _boom, "slow": slow}
        async with AsyncClient(worker.target, timeout=30) as client:
            for tool in ("ask", "aask"):
                assert await client.call(tool, {"name": "lookup", "args": [1]}, handlers=handlers) == {"found": [1]}
                assert await client.call(tool, {"name": "plain"}, handlers=handlers) == "plain"
                failed = await client.call(tool, {"name": "boom", "args": {"id": 1}}, handlers=handlers)
                assert failed == {"error": {"type": "HandlerFailed", "message": "LookupError: no row 1"}}
                missing = await client.call(tool, {"name": "absent"}, handlers=handlers)
                assert missing["error"]["type"] == "HandlerNotFound"
                timed_out = await client.call(tool, {"name": "slow", "timeout": 0.2}, handlers=handlers)
                assert timed_out["error"]["type"] == "HandlerTimeout"
                await asyncio.wait_for(cancelled.wait(), PROMPT)
                cancelled.clear()

    _run(main())


def test_plain_rpcs_carry_no_handlers(client: Client) -> None:
    out = client.call("ask", {"name": "anything"})
    assert out["error"]["type"] == "HandlersUnavailable"


# -- what the worker advertises and refuses ---------------------------------------------------------------------
def test_list_tools_shows_the_input_item_schema(client: Client) -> None:
    tools = {t.name: t for t in client.list_tools()}
    summed = tools["sum_input"]
    assert summed.input_param == "items"
    assert json.loads(summed.input_schema_json)["type"] == "object"
    assert "items" not in json.loads(summed.parameters_schema_json).get("properties", {})
    assert tools["point_input"].input_param == "points"
    assert tools["add"].input_param == "" and tools["add"].input_schema_json == ""


def test_plain_execute_tool_on_an_input_tool_is_refused(worker: Worker) -> None:
    stub = pb_grpc.ToolWorkerStub(insecure_channel(worker.target))  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ExecuteTool(pb.ExecuteToolRequest(tool_name="sum_input"), timeout=10)
    error = raised.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = tool_error_from_rpc_error(error)
    assert details is not None and details.type == "WrongRpc"
    assert "ExecuteToolDuplex" in error.details() and "'items'" in error.details()
    with Client(worker.target, timeout=10) as client, pytest.raises(KraitError, match="pass input="):
        client.call("sum_input")


def test_a_json_array_is_a_finite_input_over_plain_rpcs(client: Client) -> None:
    assert client.call("sum_input", {"items": [{"i": 1}, {"i": 2}, {"i": 3}]}) == 6
    assert client.call("acount_input", {"items": [1, 2, 3, 4]}) == 4
    assert [c.data for c in client.stream("echo_input", {"items": ["a", "b"]})][:-1] == ["a", "b"]
    with pytest.raises(InvalidArgumentsError, match="input item 1"):
        client.call("sum_input", {"items": [{"i": 1}, {"i": "x"}]})


def test_the_clients_name_the_wrong_shape(client: Client) -> None:
    with pytest.raises(KraitError, match=r"echo_input is a streaming tool: use Client\.execute_stream"):
        client.call("echo_input", input=[1])
    with pytest.raises(KraitError, match=r"sum_input is not a streaming tool: use Client\.execute"):
        list(client.stream("sum_input", input=[{"i": 1}]))


def test_a_duplex_call_that_never_starts_holds_no_slot(one_slot: Worker) -> None:
    idle = RawDuplex(one_slot)  # headers only: no 'start' yet
    try:
        _next_call_works(one_slot)
    finally:
        idle.close()


# -- the wire, through a raw stub ---------------------------------------------------------------------------------
class RawDuplex:
    """ExecuteToolDuplex by hand: :meth:`send` DuplexRequests, iterate :attr:`responses`."""

    def __init__(self, worker: Worker, timeout: float = 20.0) -> None:
        self._channel = insecure_channel(worker.target)
        self._outgoing: queue.SimpleQueue[Any] = queue.SimpleQueue()
        method = self._channel.stream_stream(
            DUPLEX,
            request_serializer=pb.DuplexRequest.SerializeToString,
            response_deserializer=pb.DuplexResponse.FromString,
        )
        self.responses = method(iter(self._outgoing.get, None), timeout=timeout)

    def send(self, **kind: Any) -> None:
        self._outgoing.put(pb.DuplexRequest(**kind))

    def close_requests(self) -> None:
        self._outgoing.put(None)

    def status(self) -> tuple[grpc.StatusCode, str]:
        try:
            for _ in self.responses:
                pass
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    def close(self) -> None:
        self.responses.cancel()
        self._outgoing.put(None)
        self._channel.close()


@pytest.fixture
def raw(worker: Worker) -> Iterator[Any]:
    opened: list[RawDuplex] = []

    def make() -> RawDuplex:
        opened.append(RawDuplex(worker))
        return opened[-1]

    yield make
    for duplex in opened:
        duplex.close()


def _item(value: Any) -> Any:
    return pb.InputItem(data=json.dumps(value).encode())


def test_raw_credit_items_and_result(raw: Any) -> None:
    call = raw()
    call.send(start=pb.ExecuteToolRequest(tool_name="sum_input"))
    first = next(call.responses)
    assert first.WhichOneof("kind") == "credit"
    assert (first.credit.items, first.credit.bytes) == (WINDOW_ITEMS, WINDOW_BYTES)
    call.send(input=pb.InputBatch(items=[_item({"i": i}) for i in range(WINDOW_ITEMS)]))
    call.close_requests()  # closing the request side ends the input
    kinds = [(m.WhichOneof("kind"), m) for m in call.responses]
    assert [k for k, _ in kinds if k != "credit"] == ["result"]
    assert json.loads(kinds[-1][1].result.data) == sum(range(WINDOW_ITEMS))


def test_raw_input_beyond_the_credit_is_refused(raw: Any) -> None:
    call = raw()
    call.send(start=pb.ExecuteToolRequest(tool_name="take_input", args_json='{"n": 100000}'))
    assert next(call.responses).WhichOneof("kind") == "credit"
    call.send(input=pb.InputBatch(items=[_item(i) for i in range(WINDOW_ITEMS + 1)]))
    code, details = call.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "beyond the credit" in details


def test_raw_streaming_tool_answers_a_handler_call(raw: Any) -> None:
    call = raw()
    call.send(start=pb.ExecuteToolRequest(tool_name="ask_stream", args_json='{"name": "h", "count": 2}'))
    call.send(input_end=pb.InputEnd())
    seen = []
    for message in call.responses:
        kind = message.WhichOneof("kind")
        if kind == "handler_call":
            hc = message.handler_call
            assert hc.name == "h"
            value = json.dumps({"echo": json.loads(hc.args_json)}).encode()
            call.send(handler_reply=pb.HandlerReply(id=hc.id, data=value))
        elif kind == "chunks":
            seen.extend(json.loads(c.data) if c.data else None for c in message.chunks.chunks)
    assert seen == [{"echo": {"i": 0}}, {"echo": {"i": 1}}, None]


@pytest.mark.parametrize(
    ("first", "named"),
    [
        ({"input": pb.InputBatch(items=[])}, "'input'"),
        ({"input_end": pb.InputEnd()}, "'input_end'"),
        ({}, "no kind set"),
        (None, "got none"),
    ],
)
def test_raw_the_first_message_must_be_start(raw: Any, first: dict[str, Any] | None, named: str) -> None:
    call = raw()
    if first is not None:
        call.send(**first)
    call.close_requests()
    code, details = call.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the first message must be 'start'" in details and named in details


def test_raw_a_second_start_is_refused(raw: Any) -> None:
    call = raw()
    call.send(start=pb.ExecuteToolRequest(tool_name="take_input", args_json='{"n": 5}'))
    assert next(call.responses).WhichOneof("kind") == "credit"
    call.send(start=pb.ExecuteToolRequest(tool_name="add"))
    code, details = call.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "a second 'start'" in details


def test_raw_refusals_of_the_call_itself(raw: Any) -> None:
    call = raw()
    call.send(start=pb.ExecuteToolRequest(tool_name="no_such_tool"))
    assert call.status()[0] == grpc.StatusCode.NOT_FOUND
    call = raw()
    call.send(start=pb.ExecuteToolRequest(tool_name="add", args_json='{"a": "x", "b": 1}'))
    code, details = call.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Traceback" not in details
    call = raw()  # input for a tool that reads none (sent once the call runs: its handler call says so)
    call.send(start=pb.ExecuteToolRequest(tool_name="ask", args_json='{"name": "h"}'))
    assert next(call.responses).WhichOneof("kind") == "handler_call"
    call.send(input=pb.InputBatch(items=[_item(1)]))
    code, details = call.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reads no input stream" in details


def test_raw_a_call_without_the_token_is_refused(worker: Worker) -> None:
    channel = grpc.insecure_channel(worker.target)
    try:
        method = channel.stream_stream(
            DUPLEX,
            request_serializer=pb.DuplexRequest.SerializeToString,
            response_deserializer=pb.DuplexResponse.FromString,
        )
        responses = method(iter([pb.DuplexRequest(start=pb.ExecuteToolRequest(tool_name="sum_input"))]), timeout=20)
        with pytest.raises(grpc.RpcError) as raised:
            list(responses)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
