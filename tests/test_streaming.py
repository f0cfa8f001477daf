"""Streaming through a real worker: one chunk per yield, in order, final chunks and their metadata.

Every stream behaviour runs against a sync generator tool (driven on its own thread, ``engine/call.py``) and its
async generator twin (driven on the worker's event loop, ``engine/aio_stream.py``: tests/fixtures/async_streams.py),
each over every way a stream leaves a worker: over gRPC, ExecuteStreamingToolBatched (many chunks per message,
large chunks framed early), ExecuteStreamingTool (one ToolChunk per message) and ExecuteToolDuplex; over the local
link (``serve --link``, driven frame by frame as an Elixir pool drives it), its batched and unbatched streams. The
two drivers and the five encoders repeat the same rules, so each gets its own failing test when one breaks a rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

from python_worker.client import Chunk, ChunkStream, Client, KraitError, build_request
from python_worker.proto import pb, pb_grpc
from python_worker.transports.grpc.channel import channel_options
from python_worker.wire import decode_batch

from .link_support import Kind, LinkProcess
from .support import authed
from .workers import Worker, running_worker

ADAPTER = "tests.fixtures.async_streams:AsyncStreamsAdapter"
WORKER_ID = "test-worker"
FINAL_KEYS = {"execution_time_ms", "tool_type", "worker_id"}
KINDS = ("sync", "async")
RPCS = ("batched", "unbatched", "duplex", "link-batched", "link-unbatched")
CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Unbatched:
    """An ExecuteStreamingTool call (one ToolChunk per message) as ChunkStream reads a call: batches of
    ``(seq, data, content_type, is_final, metadata)``."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[list[tuple[int, bytes, str, bool, dict[str, str]]]]:
        for chunk in self._call:
            yield [(chunk.seq, chunk.data, chunk.content_type, chunk.is_final, dict(chunk.metadata))]

    def cancel(self) -> None:
        self._call.cancel()


class LinkWorker(LinkProcess):
    """A ``serve --link`` worker (tests/link_support.py), one call at a time."""

    def __init__(self, adapter: str, worker_id: str) -> None:
        super().__init__(adapter, worker_id)
        self._ids = itertools.count(1)

    def next_frame(self, timeout: float = 30.0) -> Any:
        return self.frames.get(timeout=timeout)

    def open(self, request: Any, method: str) -> _LinkCall:
        call_id = next(self._ids)
        # credit for far more than any stream here sends: flow control is tested in test_link_exchange
        payload = request.SerializeToString()
        self.send(call_id=call_id, kind=Kind.OPEN, method=method, payload=payload, credit=1 << 40)
        return _LinkCall(self, call_id, batched=method == "ExecuteStreamingToolBatched")


class _LinkCall:
    """A stream over the link as ChunkStream reads a call: batches of chunk tuples, then the END frame's status
    (a failed call raises KraitError, as the gRPC client's calls do)."""

    def __init__(self, link: LinkWorker, call_id: int, *, batched: bool) -> None:
        self._link, self._call_id, self._batched = link, call_id, batched
        self._ended = False

    def __iter__(self) -> Iterator[list[Any]]:
        while not self._ended:
            frame = self._link.next_frame()
            assert frame.call_id == self._call_id, frame  # one call at a time
            if frame.kind == Kind.MESSAGE:
                yield decode_batch(frame.payload) if self._batched else [_single(frame.payload)]
            elif frame.kind == Kind.END:
                self._ended = True
                status = status_pb2.Status.FromString(frame.payload)
                if status.code:
                    raise _link_error(status)

    def cancel(self) -> None:
        if not self._ended:
            self._link.send(call_id=self._call_id, kind=Kind.CANCEL)
            while self._link.next_frame().kind != Kind.END:  # what was sent before the cancel, then END
                pass
            self._ended = True


def _single(payload: bytes) -> tuple[int, bytes, str, bool, dict[str, str]]:
    chunk = pb.ToolChunk.FromString(payload)
    return chunk.seq, chunk.data, chunk.content_type, chunk.is_final, dict(chunk.metadata)


def _link_error(status: Any) -> KraitError:
    error = pb.ToolError()
    for detail in status.details:
        if detail.Is(pb.ToolError.DESCRIPTOR):
            detail.Unpack(error)
    return KraitError(CODES[status.code], status.message, type=error.type, traceback=error.traceback)


class Streams:
    """Opens a showcase stream tool (``kind`` "sync") or its async twin over one of the streaming RPCs."""

    def __init__(self, client: Client, stub: Any, link: LinkWorker, kind: str, rpc: str) -> None:
        self.client, self.stub, self.link, self.kind, self.rpc = client, stub, link, kind, rpc

    def name(self, tool: str) -> str:
        return tool if self.kind == "sync" else f"async_{tool}"

    def open(self, tool: str, **args: Any) -> ChunkStream:
        name = self.name(tool)
        if self.rpc == "batched":
            return self.client.stream(name, args)
        if self.rpc == "duplex":
            return self.client.stream(name, args, handlers={})  # handlers (none) make it an ExecuteToolDuplex
        request = build_request(name, args, "", None)
        if self.rpc == "link-batched":
            return ChunkStream(self.link.open(request, "ExecuteStreamingToolBatched"), 30, name)
        if self.rpc == "link-unbatched":
            return ChunkStream(self.link.open(request, "ExecuteStreamingTool"), 30, name)
        return ChunkStream(_Unbatched(self.stub.ExecuteStreamingTool(request, timeout=30)), 30, name)

    def run(self, tool: str, **args: Any) -> list[Any]:
        return list(self.open(tool, **args))


@pytest.fixture(scope="module")
def streams_worker() -> Iterator[Worker]:
    with running_worker(ADAPTER, "--worker-id", WORKER_ID) as w:
        yield w


@pytest.fixture(scope="module")
def link_worker() -> Iterator[LinkWorker]:
    link = LinkWorker(ADAPTER, WORKER_ID)
    try:
        yield link
    finally:
        link.close()


@pytest.fixture(scope="module")
def connection(streams_worker: Worker, link_worker: LinkWorker) -> Iterator[tuple[Client, Any, LinkWorker]]:
    channel = grpc.insecure_channel(streams_worker.target, options=channel_options(64 << 20))
    with Client(streams_worker.target, timeout=30) as client:
        try:
            yield client, pb_grpc.ToolWorkerStub(authed(channel)), link_worker  # type: ignore[no-untyped-call]
        finally:
            channel.close()


@pytest.fixture
def client(connection: tuple[Client, Any, LinkWorker]) -> Client:
    return connection[0]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=RPCS)
def streams(request: pytest.FixtureRequest, connection: tuple[Client, Any, LinkWorker], kind: str) -> Streams:
    return Streams(*connection, kind, str(request.param))


def assert_final_metadata(meta: dict[str, str], **extra: str) -> None:
    """Exactly the engine's final keys (execution time a whole number of ms, >= 0) and ``extra``."""
    assert meta.keys() == FINAL_KEYS | extra.keys()
    assert meta["tool_type"] == "remote"
    assert meta["worker_id"] == WORKER_ID
    assert meta["execution_time_ms"].isdigit()
    assert {key: meta[key] for key in extra} == extra


def test_one_chunk_per_yield_then_synthetic_final(streams: Streams) -> None:
    chunks = streams.run("stream_progress", steps=3)
    assert [c.data for c in chunks[:3]] == [
        {"step": 1, "total": 3, "progress": pytest.approx(100 / 3)},
        {"step": 2, "total": 3, "progress": pytest.approx(200 / 3)},
        {"step": 3, "total": 3, "progress": 100.0},
    ]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert [c.is_final for c in chunks] == [False, False, False, True]
    final = chunks[-1]
    assert final.data is None and final.content_type == ""
    assert_final_metadata(final.metadata, synthetic_final="true")
    assert all(not c.metadata for c in chunks[:3])


def test_execution_time_covers_the_whole_tool(streams: Streams) -> None:
    # 3 steps of >= 40 ms each: a lower bound only (a sleep is never shorter), whatever the machine's speed
    chunks = streams.run("stream_progress", steps=3, delay_ms=40)
    assert len(chunks) == 4
    assert int(chunks[-1].metadata["execution_time_ms"]) >= 120


def test_explicit_final_gets_metadata_and_no_synthetic_chunk(streams: Streams) -> None:
    chunks = streams.run("stream_items", count=3)
    assert [c.seq for c in chunks] == [0, 1, 2]
    assert [c.data for c in chunks] == [{"index": i, "value": f"Item {i}"} for i in (1, 2, 3)]
    assert [c.is_final for c in chunks] == [False, False, True]
    assert [c.metadata for c in chunks[:2]] == [{"item": "1"}, {"item": "2"}]
    assert_final_metadata(chunks[-1].metadata, item="3")  # the tool's own metadata survives, no synthetic_final


def test_an_explicit_final_alone(streams: Streams) -> None:
    (chunk,) = streams.run("stream_items", count=1)
    assert chunk.seq == 0 and chunk.is_final and chunk.data == {"index": 1, "value": "Item 1"}
    assert_final_metadata(chunk.metadata, item="1")


def test_empty_stream_is_just_a_synthetic_final(streams: Streams) -> None:
    (chunk,) = streams.run("stream_numbers", count=0)
    assert chunk.seq == 0 and chunk.is_final and chunk.data is None and chunk.content_type == ""
    assert_final_metadata(chunk.metadata, synthetic_final="true")


def test_many_small_chunks_keep_their_order(streams: Streams) -> None:
    chunks = streams.run("stream_small", count=20_000)
    assert [c.data["i"] for c in chunks[:-1]] == list(range(20_000))
    assert [c.seq for c in chunks] == list(range(20_001))
    assert [c.is_final for c in chunks].index(True) == 20_000
    assert_final_metadata(chunks[-1].metadata, synthetic_final="true")


def test_numpy_chunks_travel_as_npy(streams: Streams) -> None:
    chunks = streams.run("stream_arrays", batches=3, batch_rows=256, cols=64)
    arrays = [c.data for c in chunks[:-1]]
    assert all(c.content_type == "application/x-npy" for c in chunks[:-1])
    assert [a.shape for a in arrays] == [(256, 64)] * 3
    assert all(a.dtype == np.float32 for a in arrays)
    assert [float(a[0, 0]) for a in arrays] == [0.0, 1.0, 2.0]  # each chunk holds the array as it was yielded
    assert_final_metadata(chunks[-1].metadata, synthetic_final="true")


def test_large_arrays_span_several_messages(streams: Streams) -> None:
    # 4 MiB chunks are bigger than a batch's byte budget: each goes alone, intact (framed early on the batched RPCs)
    chunks = streams.run("stream_arrays", batches=3, batch_rows=1024, cols=1024)
    assert [c.data.nbytes for c in chunks[:-1]] == [4 << 20] * 3
    assert [float(c.data[0, 0]) for c in chunks[:-1]] == [0.0, 1.0, 2.0]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert_final_metadata(chunks[-1].metadata, synthetic_final="true")


def test_text_chunks(streams: Streams) -> None:
    chunks = streams.run("stream_text", lines=2)
    assert [(c.data, c.content_type) for c in chunks[:-1]] == [
        ("line 1", "text/plain; charset=utf-8"),
        ("line 2", "text/plain; charset=utf-8"),
    ]


def test_progress_reports_arrive_in_order(streams: Streams) -> None:
    chunks = streams.run("progress_demo", steps=2)
    kinds = [("progress" if c.is_progress else "data") for c in chunks[:-1]]
    assert kinds == ["progress", "data", "progress", "data"]
    assert [c.data for c in chunks[:-1]] == [
        {"progress": 1, "total": 2, "message": "step 1"},
        {"done": 1},
        {"progress": 2, "total": 2, "message": "step 2"},
        {"done": 2},
    ]
    assert [c.metadata for c in chunks[:-1]] == [{"krait.event": "progress"}, {}] * 2
    assert [c.seq for c in chunks] == [0, 1, 2, 3, 4]  # progress events take their place in the sequence
    assert not chunks[-1].is_progress
    assert_final_metadata(chunks[-1].metadata, synthetic_final="true")


def test_yield_after_final_fails_the_call(streams: Streams) -> None:
    received: list[Chunk] = []
    with pytest.raises(KraitError) as info:
        received.extend(streams.open("yield_after_final"))
    assert received == []  # the held final chunk is never sent
    assert info.value.code.name == "FAILED_PRECONDITION"
    assert info.value.type == "StreamContractError"
    name = streams.name("yield_after_final")
    assert info.value.message == (
        f"StreamContractError: {name} yielded after its final chunk (seq 0);"
        " the final chunk must be the last thing a tool yields"
    )


@pytest.mark.parametrize("rpc", RPCS)
def test_a_returned_dict_is_never_streamed_key_by_key(connection: tuple[Client, Any, LinkWorker], rpc: str) -> None:
    # sync only: an async generator function always returns an async iterator
    with pytest.raises(KraitError) as info:
        Streams(*connection, "sync", rpc).run("returns_dict")
    assert info.value.code.name == "FAILED_PRECONDITION"
    assert "returned dict, not an iterator" in info.value.message


def test_error_mid_stream_after_the_chunks_before_it(streams: Streams) -> None:
    received: list[Chunk] = []
    with pytest.raises(KraitError) as info:
        received.extend(streams.open("failing_stream", fail_at=2))
    assert [c.data for c in received] == [{"step": 1}, {"step": 2}]
    assert [c.seq for c in received] == [0, 1]
    assert not any(c.is_final for c in received)  # no final chunk after an error
    assert info.value.code.name == "UNKNOWN"
    assert info.value.type == "ValueError"
    assert str(info.value) == "ValueError: failed at step 3"
    name = streams.name("failing_stream")
    assert f'in {name}\n    raise ValueError(f"failed at step {{fail_at + 1}}")' in info.value.traceback


def test_an_error_before_any_chunk(streams: Streams) -> None:
    with pytest.raises(KraitError) as info:
        streams.run("stream_progress", steps=-1)
    assert info.value.type == "ValueError"
    assert str(info.value) == "ValueError: steps must be >= 0"


def test_unary_tools_and_exact_json(client: Client) -> None:
    assert client.execute("add", a=1, b=2.5) == 3.5
    assert client.execute("greet", name="Ada") == "Hello, Ada!"
    assert client.execute("big_int", exponent=80) == 2**80
    assert client.execute("echo", value={"n": [1, 2**70, -(2**64)], "s": "ü"}) == {"n": [1, 2**70, -(2**64)], "s": "ü"}
    response = client.call_raw("add", {"a": 1, "b": 2})
    assert_final_metadata(dict(response.metadata))
    assert response.content_type == "application/json"


def test_binary_arguments_travel_beside_json(client: Client) -> None:
    values = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert client.execute("array_stats", values=values) == {"dtype": "int16", "shape": [3, 4], "sum": 66.0, "mean": 5.5}
    scaled = client.execute("scale_array", values=values.astype(np.float64), factor=0.5)
    assert isinstance(scaled, np.ndarray) and np.array_equal(scaled, values * 0.5)
    assert client.execute("reverse_bytes", blob=b"\x00\x01\xff") == b"\xff\x01\x00"
