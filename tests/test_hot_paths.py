"""The worker's hot paths keep every guarantee of the paths they shortcut: the argument validation fast path
agrees with pydantic (accept or refuse, the values and their types, the messages), for sync and async tools."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Optional

import numpy as np
import pydantic
import pytest
from google.rpc import code_pb2, status_pb2
from prometheus_client import CollectorRegistry

from python_worker import BaseAdapter, StreamChunk, codec, tool
from python_worker.engine import Engine
from python_worker.engine.buffer import ChunkBuffer
from python_worker.engine.call import prepare
from python_worker.engine.sessions import SessionStore
from python_worker.errors import CallError, InvalidArguments
from python_worker.metrics import WorkerMetrics
from python_worker.proto import link_pb, pb
from python_worker.sdk.tool import ArgumentError, ToolSpec
from python_worker.transports.link import INLINE_TICK_S, LinkServer
from python_worker.transports.link_io import (
    END,
    JSON_CHUNKS,
    MESSAGE,
    OPEN,
    SMALL_REPLY,
    STARTED,
    FrameWriter,
)
from python_worker.wire import LARGE, encode_batch, frame_json, varint

from .link_support import InProcessLink


class _Simple(BaseAdapter):
    @tool
    def mixed(self, a: int, x: float, s: str | None = None, flag: bool = False, y: float = 0) -> dict[str, Any]:
        return {"a": a}

    @tool
    async def mixed_async(
        self,
        a: int,
        x: float,
        s: Optional[str] = None,  # noqa: UP045 - the old spelling is simple too
        flag: bool = False,
        y: float = 0,
    ) -> int:
        return a

    @tool
    def counted(self, n: int = 3) -> Iterator[int]:
        yield from range(n)

    @tool
    async def counted_async(self, n: int = 3) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @tool
    def nothing(self) -> int:
        return 0


class _NotSimple(BaseAdapter):
    @tool
    def listed(self, values: list[int]) -> int:
        return len(values)

    @tool
    def bounded(self, n: Annotated[int, pydantic.Field(ge=0)]) -> int:
        return n

    @tool
    def loose(self, a: int, **extra: Any) -> int:
        return a

    @tool
    def binary(self, blob: bytes, n: int = 1) -> int:
        return n

    @tool
    def mutable_default(self, tags: str | None = None, n: int | str = 1) -> int:
        return 0


_BIG = 1 << 63
# every kind of argument dict the fast path must accept as pydantic does, or leave to pydantic
_ARGS: list[dict[str, Any]] = [
    {"a": 1, "x": 2.5},
    {"a": 1, "x": 2},  # an int for a float: converted, as pydantic does
    {"a": -5, "x": -(2**53)},
    {"a": 1, "x": 2**53 + 1},  # beyond exact conversion: pydantic decides
    {"a": 1, "x": 2**70},
    {"a": _BIG - 1, "x": 0.0},
    {"a": _BIG, "x": 0.0},  # beyond 64 bits: pydantic decides
    {"a": -_BIG, "x": 0.0},
    {"a": 10**30, "x": 1.0},
    {"a": 1, "x": 1.0, "s": "text", "flag": True, "y": 3},
    {"a": 1, "x": 1.0, "s": None},
    {"a": 1, "x": 1.0, "s": "ünïcode ✓"},
    {"a": 1, "x": 1.0, "s": "\ud800"},  # a lone surrogate (only a dict built in Python holds one)
    {"a": 1, "x": 1.0, "flag": None},  # None for a bool that does not allow it
    {"a": 1, "x": 1.0, "flag": 1},  # strict: 1 is not a bool
    {"a": True, "x": 1.0},  # strict: a bool is not an int
    {"a": 1.0, "x": 1.0},  # a float is not an int
    {"a": "1", "x": 1.0},  # "1" is not an int
    {"a": 1, "x": "1.5"},
    {"a": 1, "x": True},
    {"a": 1, "x": None},
    {"a": 1, "x": float("inf")},
    {"a": 1, "x": float("nan")},
    {"a": 1, "x": 1e308 * 10},
    {"a": 1},  # missing required
    {},
    {"a": 1, "x": 1.0, "unknown": 2},
    {"a": 1, "x": 1.0, "s": ["list"]},
    {"a": 1, "x": 1.0, "s": {"k": "v"}},
    {"a": [1], "x": 1.0},
    {"a": 1, "x": 1.0, "y": None},
]


def _pydantic_only(spec: ToolSpec) -> ToolSpec:
    return dataclasses.replace(spec, fast_args=None)


def _outcome(spec: ToolSpec, args: dict[str, Any]) -> tuple[str, Any]:
    try:
        values = spec.validate(dict(args))
    except ArgumentError as exc:
        return "refused", str(exc)
    except Exception as exc:  # whatever the pydantic path raises, the fast path must raise too
        return "raised", (type(exc), str(exc))
    return "accepted", [(name, type(value), value) for name, value in sorted(values.items())]


@pytest.mark.parametrize("tool_name", ["mixed", "mixed_async"])
@pytest.mark.parametrize("args", _ARGS, ids=[repr(a)[:60] for a in _ARGS])
def test_the_fast_path_agrees_with_pydantic(tool_name: str, args: dict[str, Any]) -> None:
    spec = _Simple.tool_specs()[tool_name]
    assert spec.fast_args is not None
    fast = spec.fast_args.validate(dict(args))
    expected = _outcome(_pydantic_only(spec), args)
    if fast is not None:  # what the fast path accepts, pydantic accepts, with the same values of the same types
        assert expected[0] == "accepted"
        assert [(n, type(v), v) for n, v in sorted(fast.items())] == expected[1]
    assert _outcome(spec, args) == expected


def test_the_fast_path_takes_the_usual_calls() -> None:
    """The plain cases never reach pydantic (else the fast path would be dead code)."""
    specs = _Simple.tool_specs()
    fast = specs["mixed"].fast_args
    assert fast is not None
    assert fast.validate({"a": 1, "x": 2}) == {"a": 1, "x": 2.0, "s": None, "flag": False, "y": 0}
    assert fast.validate({"a": 1, "x": 2.5, "s": "é", "flag": True, "y": 1.5}) is not None
    assert specs["counted"].fast_args is not None and specs["counted"].fast_args.validate({}) == {"n": 3}
    assert specs["counted_async"].fast_args is not None
    assert specs["nothing"].fast_args is not None and specs["nothing"].fast_args.validate({}) == {}


@pytest.mark.parametrize("tool_name", ["listed", "bounded", "loose", "binary", "mutable_default"])
def test_signatures_that_are_not_simple_go_to_pydantic(tool_name: str) -> None:
    assert _NotSimple.tool_specs()[tool_name].fast_args is None


@pytest.mark.parametrize("tool_name", ["mixed", "mixed_async"])
@pytest.mark.parametrize(
    "args_json",
    ['{"a": 1, "x": 2}', '{"a": 1}', '{"a": true, "x": 1}', '{"a": 1, "x": 1, "zz": 0}', '{"a": 1, "x": 1e999}'],
)
def test_a_call_gets_what_pydantic_would_give_it(tool_name: str, args_json: str) -> None:
    """Through the engine's prepare(): accepted calls get pydantic's values, refused ones its message."""
    specs = _Simple.tool_specs()
    slow = {name: _pydantic_only(spec) for name, spec in specs.items()}
    request = pb.ExecuteToolRequest(tool_name=tool_name, args_json=args_json)
    sessions = SessionStore(ttl=60)

    def run(table: dict[str, ToolSpec]) -> Any:
        try:
            _, kwargs, _ = prepare(request, specs=table, streaming=False, sessions=sessions, worker_id="w")
        except InvalidArguments as exc:
            return "refused", str(exc)
        return "accepted", sorted((k, type(v), v) for k, v in kwargs.items())

    assert run(specs) == run(slow)


# -- the link's hot path, in this process: a LinkServer over real pipes -------------------------------------


class _Napper(BaseAdapter):
    @tool
    def nap(self, seconds: float = 0.0) -> float:
        time.sleep(seconds)
        return seconds

    @tool
    def text(self, n: int) -> str:
        return "x" * n


class _Pool(InProcessLink):
    """A LinkServer serving ``_Napper`` over two pipes, and the frames it writes back."""

    def __init__(self) -> None:
        super().__init__(_Napper())


@pytest.fixture
def pool() -> Iterator[_Pool]:
    p = _Pool()
    yield p
    p.close()


def test_a_unary_reply_is_started_then_message_then_end(pool: _Pool) -> None:
    for n in (3, SMALL_REPLY + 10):  # joined into one write, and written from its own buffer
        started, message, end = pool.call("text", n=n)
        assert [started.kind, message.kind, end.kind] == [STARTED, MESSAGE, END]
        assert (started.payload, end.payload) == (b"", b"")
        response = pb.ExecuteToolResponse.FromString(message.payload)
        assert json.loads(response.data) == "x" * n
        assert (response.metadata["worker_id"], response.metadata["tool_type"]) == ("w", "remote")
        assert response.metadata["execution_time_ms"].isdigit() and response.content_type == "application/json"


def test_a_quick_tool_slow_once_is_served_inline_again(pool: _Pool) -> None:
    """A call that outlives the watchdog's tick marks its tool slow (its next calls are handed over at once);
    the first of those that ends within a tick clears the mark, so a quick tool preempted once is not handed
    over (a follower woken per call) for the next SLOW_TOOL_S seconds."""
    assert pool.call("nap", seconds=0.0)[-1].payload == b""
    assert not pool.server._is_slow("nap")
    pool.call("nap", seconds=20 * INLINE_TICK_S)
    assert pool.server._is_slow("nap")
    pool.call("nap", seconds=0.0)
    assert not pool.server._is_slow("nap")
    pool.call("nap", seconds=20 * INLINE_TICK_S)  # and a slow one is marked again
    assert pool.server._is_slow("nap")


def test_varints_are_protobuf_varints() -> None:
    """The short cuts for two- and three-byte varints (call ids, chunk numbers) write what protobuf writes."""
    edges = [1, 127, 128, (1 << 14) - 1, 1 << 14, (1 << 21) - 1, 1 << 21, (1 << 28) + 5, (1 << 63) + 1]
    for n in [*range(1, 1 << 15, 3), *range((1 << 21) - 2000, (1 << 21) + 2000), *edges]:
        frame = link_pb.LinkFrame(call_id=n).SerializeToString()  # (0, a default, is not written)
        assert b"\x08" + varint(n) == frame, n


# -- a stream's chunks: the plain-JSON fast path keeps the rules of the full one ----------------------------


class _Yielder(BaseAdapter):
    @tool
    def sizes(self, sizes: list[int]) -> Iterator[Any]:
        for n in sizes:
            yield "x" * n

    @tool
    async def sizes_async(self, sizes: list[int]) -> AsyncIterator[Any]:
        for n in sizes:
            yield "x" * n


def _chunks(
    tool_name: str, sizes: list[int], max_message_bytes: int, *, batched: bool = True
) -> tuple[list[Any], BaseException | None]:
    """The queued chunks of a stream (tuples, or large ones already framed), and the error it ended with."""
    engine = Engine(
        _Yielder(),
        adapter_path="tests:_Yielder",
        worker_id="w",
        sessions=SessionStore(ttl=60),
        max_calls=2,
        max_message_bytes=max_message_bytes,
    )
    request = pb.ExecuteToolRequest(tool_name=tool_name, args_json=json.dumps({"sizes": sizes}))
    handle = engine.stream(request, {}, frame_large=batched)
    out: list[Any] = []
    try:
        handle.start()
        for batch in handle.batches():
            out.extend(batch)
    except Exception as exc:
        return out, exc
    finally:
        handle.close()
    return out, None


@pytest.mark.parametrize("tool_name", ["sizes", "sizes_async"])
@pytest.mark.parametrize("batched", [True, False])
def test_plain_json_chunks_of_every_size_keep_their_rules(tool_name: str, batched: bool) -> None:
    small, medium, large = 3, 600, LARGE + 10  # copied into Python's allocator; as encoded; framed at once
    chunks, error = _chunks(tool_name, [small, medium, large], max_message_bytes=8 << 20, batched=batched)
    assert error is None
    *data, final = chunks
    # a batched transport's chunks are queued framed (its batch only joins them), another's as tuples
    assert [type(c) for c in data] == ([bytes] * 3 if batched else [tuple] * 3)
    decoded = pb.ToolChunkBatch.FromString(encode_batch(chunks)).chunks
    assert [json.loads(c.data) for c in decoded[:3]] == ["x" * small, "x" * medium, "x" * large]
    assert [(c.seq, c.content_type, c.is_final, dict(c.metadata)) for c in decoded[:3]] == [
        (n, "application/json", False, {}) for n in range(3)
    ]
    assert decoded[3].is_final and decoded[3].seq == 3 and final[3] is True


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 16383, 16384, (1 << 21) + 1])
@pytest.mark.parametrize("size", [1, 100, 106, 107, 108, 127, 128, 600, 20_000])
def test_a_framed_json_chunk_is_what_the_batch_encoder_writes(seq: int, size: int) -> None:
    data = b"1" * size
    entry = frame_json(seq, data)
    assert entry == encode_batch([(seq, data, "application/json", False, None)])
    assert entry is not data and data == b"1" * size


@pytest.mark.parametrize("tool_name", ["sizes", "sizes_async"])
def test_a_plain_json_chunk_beyond_the_message_size_is_refused(tool_name: str) -> None:
    chunks, error = _chunks(tool_name, [10, 6000], max_message_bytes=4096 + 5000)
    assert len(chunks) == 1
    assert isinstance(error, CallError) and error.error_type == "ChunkTooLarge"
    assert "chunk 1 holds 6002 bytes, more than the worker's maximum message size (5000 bytes)" in str(error)


def test_a_partial_take_counts_the_sizes_of_what_came_after_a_whole_take() -> None:
    buffer = ChunkBuffer(max_chunks=100, max_bytes=1 << 20)
    for n in (10, 20, 30):
        buffer.put(n, n)
    assert buffer.take(100, 1 << 20) == [10, 20, 30]  # all of it: the buffer's contents are swapped out
    buffer.put("a", 100)
    buffer.put("b", 100)
    assert buffer.take(100, 150) == ["a"]  # by their own sizes, not those of the chunks taken before
    assert buffer.take(100, 150) == ["b"]


def test_a_tools_calls_are_counted_by_status_whatever_came_first() -> None:
    """The metric children cached per (tool, status): each status its own series, the duration one per tool."""
    metrics = WorkerMetrics(CollectorRegistry())
    for status in ("OK", "INVALID_ARGUMENT", "OK", "CANCELLED", "OK"):
        metrics.call_ended("add", status, 0.001)
    metrics.call_ended("other", "OK", 0.001)
    value = metrics.registry.get_sample_value
    assert value("krait_tool_calls_total", {"tool": "add", "status": "OK"}) == 3
    assert value("krait_tool_calls_total", {"tool": "add", "status": "INVALID_ARGUMENT"}) == 1
    assert value("krait_tool_calls_total", {"tool": "add", "status": "CANCELLED"}) == 1
    assert value("krait_tool_calls_total", {"tool": "other", "status": "OK"}) == 1
    assert value("krait_tool_duration_seconds_count", {"tool": "add"}) == 5


def test_the_tool_sees_the_requests_metadata() -> None:
    specs = _Simple.tool_specs()
    sessions = SessionStore(ttl=60)
    seen = []
    for metadata in ({"k": "v", "trace": "1"}, {}, {}):
        request = pb.ExecuteToolRequest(tool_name="counted", args_json="{}", metadata=metadata)
        _, _, ctx = prepare(request, specs=specs, streaming=True, sessions=sessions, worker_id="w")
        assert ctx.metadata == metadata
        seen.append(ctx.metadata)
    assert seen[1] is not seen[2]  # each call its own dict, which its tool may change


# -- a batched stream to a pool that reads JSON_CHUNKS frames (OPEN metadata krait-json-chunks: "1") ----------


def _mixed_items(n: int, big: int) -> list[Any]:
    """Plain JSON chunks around one of each other kind: metadata, binary, a large array, a final with data."""
    items: list[Any] = [{"i": k} for k in range(n)]
    items.insert(n // 3, StreamChunk(data={"m": 1}, metadata={"k": "v"}))
    items.insert(n // 2, b"raw bytes")
    if big:
        items.insert(2 * n // 3, np.arange(big, dtype=np.int64))
    items.append(StreamChunk(data={"last": True}, is_final=True))
    return items


class _Streamer(BaseAdapter):
    @tool
    def mixed(self, n: int, big: int = 0) -> Iterator[Any]:
        yield from _mixed_items(n, big)

    @tool
    async def mixed_async(self, n: int, big: int = 0) -> AsyncIterator[Any]:
        for item in _mixed_items(n, big):
            yield item

    @tool
    def sizes(self, sizes: list[int]) -> Iterator[Any]:
        for size in sizes:
            yield "x" * size


class _StreamPool(InProcessLink):
    """A LinkServer serving ``_Streamer``; :meth:`stream` opens a batched stream as an Elixir pool does."""

    def __init__(self) -> None:
        super().__init__(_Streamer(), max_message_bytes=1 << 20)

    def stream(self, tool_name: str, *, json_chunks: bool = True, **args: Any) -> list[Any]:
        """A batched stream's frames after STARTED, to its END."""
        request = pb.ExecuteToolRequest(tool_name=tool_name, args_json=json.dumps(args))
        call_id = self.open(
            link_pb.LinkFrame(
                kind=OPEN,
                method="ExecuteStreamingToolBatched",
                payload=request.SerializeToString(),
                credit=1 << 30,
                metadata={"krait-json-chunks": "1"} if json_chunks else {},
            )
        )
        assert self.frames.get(timeout=10).kind == STARTED
        frames = [self.frames.get(timeout=10)]
        while frames[-1].kind != END:
            frames.append(self.frames.get(timeout=10))
        assert {f.call_id for f in frames} == {call_id}
        return frames


def _stream_chunks(frames: list[Any]) -> list[tuple[int, Any, str, bool, dict[str, str]]]:
    """The chunks of a stream's JSON_CHUNKS and MESSAGE frames, in the order they came."""
    out: list[tuple[int, Any, str, bool, dict[str, str]]] = []
    for f in frames:
        if f.kind == JSON_CHUNKS:
            values = json.loads(f.payload)
            out += [(f.first_seq + k, v, "application/json", False, {}) for k, v in enumerate(values)]
        elif f.kind == MESSAGE:
            for c in pb.ToolChunkBatch.FromString(f.payload).chunks:
                value = codec.decode_value(c.data, c.content_type)
                out.append((c.seq, value, c.content_type, c.is_final, dict(c.metadata)))
    return out


@pytest.fixture
def streams() -> Iterator[_StreamPool]:
    p = _StreamPool()
    yield p
    p.close()


@pytest.mark.parametrize("tool_name", ["mixed", "mixed_async"])
def test_a_stream_to_a_json_chunks_pool_keeps_its_chunks_order_and_numbers(
    streams: _StreamPool, tool_name: str
) -> None:
    big = (LARGE // 8) * 3  # a 96 KiB array: written from its own buffer
    frames = streams.stream(tool_name, n=3000, big=big)
    assert status_pb2.Status.FromString(frames[-1].payload).code == 0
    assert JSON_CHUNKS in {f.kind for f in frames}
    chunks = _stream_chunks(frames)
    expected = _mixed_items(3000, big)
    assert [c[0] for c in chunks] == list(range(len(expected)))  # every seq once, in order
    for (_, value, content_type, is_final, meta), item in zip(chunks, expected, strict=True):
        if isinstance(item, dict):
            assert (value, content_type, is_final, meta) == (item, "application/json", False, {})
        elif isinstance(item, bytes):
            assert (value, content_type) == (item, "application/octet-stream")
        elif isinstance(item, np.ndarray):
            assert content_type == "application/x-npy" and np.array_equal(value, item)
        elif item.is_final:
            assert (value, is_final, meta["worker_id"]) == (item.data, True, "w")
        else:
            assert (value, is_final, meta) == (item.data, False, item.metadata)
    # the plain JSON chunks travelled as arrays only: none in a MESSAGE
    in_messages = [c for f in frames if f.kind == MESSAGE for c in pb.ToolChunkBatch.FromString(f.payload).chunks]
    assert all(c.content_type != "application/json" or c.metadata or c.is_final for c in in_messages)


def test_without_the_header_a_stream_is_tool_chunk_batches_as_over_grpc(streams: _StreamPool) -> None:
    frames = streams.stream("mixed", json_chunks=False, n=50)
    assert {f.kind for f in frames} == {MESSAGE, END}
    assert [c[0] for c in _stream_chunks(frames)] == list(range(50 + 3))


def test_a_chunk_over_the_maximum_ends_a_json_chunks_stream_as_before(streams: _StreamPool) -> None:
    frames = streams.stream("sizes", sizes=[10, 20, (1 << 20) + 1])
    status = status_pb2.Status.FromString(frames[-1].payload)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert "chunk 2 holds" in status.message
    assert [c[1] for c in _stream_chunks(frames)] == ["x" * 10, "x" * 20]


def test_a_batch_split_into_frames_spends_credit_for_their_payload_bytes() -> None:
    """What the credit counts: the frames' payload bytes, as for MESSAGE frames (an Elixir pool acks each)."""
    spent: list[int] = []

    class _Call:
        call_id = 5

        def spend(self, n: int) -> bool:
            spent.append(n)
            return True

    class _Handle:
        def batches(self) -> Iterator[list[Any]]:
            yield [(0, b"1", "application/json", False, None), (1, b"22", "application/json", True, {"a": "b"})]

    sent: list[bytes] = []
    server = LinkServer.__new__(LinkServer)
    read_end, write_end = os.pipe()
    server.writer = FrameWriter(write_end)
    server._send_segments(_Call(), _Handle())  # type: ignore[arg-type]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        while len(head := pipe.read(4)) == 4:
            sent.append(link_pb.LinkFrame.FromString(pipe.read(struct.unpack(">I", head)[0])).payload)
    assert [len(p) for p in sent] == [3, len(sent[1])] and sent[0] == b"[1]"
    assert spent == [sum(map(len, sent))]
