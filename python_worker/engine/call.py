"""One tool call: argument preparation, the tool's own thread for streams, and the final-chunk rules.

Streaming rules (documented in docs/reference.md, "The chunk format"):
- every value the tool yields becomes one chunk, in order, ``seq`` 0, 1, 2, ...;
- the final chunk gets ``execution_time_ms``, ``tool_type`` (``remote``) and ``worker_id`` in its metadata;
  if the tool ends without yielding ``StreamChunk(is_final=True)``, a synthetic final chunk with no payload
  and ``synthetic_final: "true"`` is sent;
- a final chunk is held until the generator has returned, so that the call ends when the tool ends; a yield
  after the final chunk fails the call with FAILED_PRECONDITION (the final chunk is not sent);
- on cancellation the cancel flag is set at once and the generator is closed (its ``finally`` runs) at its
  next yield, on its own thread.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import grpc
import numpy as np

from .. import codec
from ..errors import CallError, InvalidArguments, ProtocolViolation, ResultError, ToolNotFound, WrongRpc, clip
from ..proto import pb
from ..sdk import BaseAdapter, StreamChunk, ToolContext, ToolSpec
from ..sdk.tool import ArgumentError
from ..wire import LARGE, Chunk, frame, frame_json
from . import aio_runner
from .buffer import Cancelled, ChunkBuffer
from .exchange import Exchange, check_input, finite_input
from .sessions import SessionStore, check_session_id

log = logging.getLogger("krait.worker")


def prepare(
    request: Any,
    *,
    specs: Mapping[str, ToolSpec],
    streaming: bool,
    sessions: SessionStore,
    worker_id: str,
    call_id: str = "",
    exchange: Exchange | None = None,
) -> tuple[ToolSpec, dict[str, Any], ToolContext]:
    """Resolve the tool, check the RPC fits it, decode and validate the arguments, build the context (bound to
    the call's ``exchange`` with its caller: input stream and handler calls)."""
    check_session_id(request.session_id)
    spec = specs.get(request.tool_name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none"
        raise ToolNotFound(f"unknown tool {clip(request.tool_name)!r}; this worker serves: {known}")
    if spec.supports_streaming != streaming:
        if spec.supports_streaming:
            raise WrongRpc(f"{spec.name} is a streaming tool: call it with ExecuteStreamingTool")
        raise WrongRpc(f"{spec.name} is not a streaming tool: call it with ExecuteTool")
    args = _parse_args(request.args_json, spec.name)
    given_input = _input_from_args(spec, args, exchange)
    binary_args = request.binary_args
    # len() first: a protobuf map's items() and dict() cost ~1-3 µs even when empty (the usual case)
    for name, blob in binary_args.items() if len(binary_args) else ():
        if name in args:
            raise InvalidArguments(f"{spec.name}: argument {name!r} is given both in args_json and binary_args")
        args[name] = _decode_blob(spec.name, name, blob)
    try:
        kwargs = spec.validate(args)
    except ArgumentError as exc:
        raise InvalidArguments(str(exc)) from None
    # last: a session acquired here is released by the caller once the call ends
    session_id = request.session_id
    session = sessions.acquire(session_id) if session_id else None
    metadata = request.metadata
    ctx = ToolContext(
        tool_name=spec.name,
        worker_id=worker_id,
        session_id=session_id,
        session=session,
        metadata=dict(metadata) if len(metadata) else {},
        call_id=call_id,
    )
    if spec.context_param:
        kwargs[spec.context_param] = ctx
    if spec.input is not None:
        if given_input is not None:
            kwargs[spec.input.param] = finite_input(spec.input, spec.name, given_input, spec.is_async)
        else:
            assert exchange is not None  # checked by _input_from_args
            kwargs[spec.input.param] = exchange.iterator(spec.is_async)
    if exchange is not None:
        exchange.bind(spec.name, spec.input if given_input is None else None, ctx)
    return spec, kwargs, ctx


def _input_from_args(spec: ToolSpec, args: dict[str, Any], exchange: Exchange | None) -> list[Any] | None:
    """The whole input given as a JSON array in the arguments (taken out of them), or None when it streams;
    refuses a call that cannot give the tool its input, or gives input to a tool that reads none."""
    declared = exchange.input_declared if exchange is not None else False
    if spec.input is None:
        if declared:
            raise InvalidArguments(f"{spec.name} reads no input stream (drop the input)")
        return None
    param = spec.input.param
    if param in args:
        values = args.pop(param)
        if not isinstance(values, list):
            raise InvalidArguments(
                f"{spec.name}: argument '{param}' is the tool's input: stream it, or give it whole as a JSON array"
                f" (got {type(values).__name__})"
            )
        if declared:
            raise InvalidArguments(f"{spec.name}: its input is given both as '{param}' and as a stream")
        return values
    if declared is False:
        raise WrongRpc(
            f"{spec.name} reads an input stream: call it with ExecuteToolDuplex, with input from an Elixir pool or a"
            f" WebSocket (or pass its whole input as a JSON array in '{param}')"
        )
    return None


def _parse_args(text: str, tool_name: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        args = codec.decode_json(text)
    except codec.JSONValueError as exc:
        where = f"argument {codec.format_path(exc.path)}" if exc.path else "args_json"
        raise InvalidArguments(f"{tool_name}: {where}: {exc.problem}") from None
    except ValueError as exc:  # orjson's and json's decode errors are both ValueErrors
        raise InvalidArguments(f"{tool_name}: args_json is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise InvalidArguments(f"{tool_name}: args_json must be a JSON object, got {type(args).__name__}")
    return args


def _decode_blob(tool_name: str, name: str, blob: Any) -> Any:
    if blob.content_type == codec.NPY:
        try:
            array = codec.decode_npy(blob.data)
            codec.check_argument_dtype(array)
            return array
        except ValueError as exc:
            raise InvalidArguments(f"{tool_name}: binary argument {name!r}: {exc}") from None
    if blob.content_type in (codec.BYTES, ""):
        return bytes(blob.data)
    raise InvalidArguments(
        f"{tool_name}: binary argument {name!r} has content type {blob.content_type!r};"
        f" expected {codec.NPY} or {codec.BYTES}"
    )


def _encode(tool_name: str, what: str, value: Any, content_type: str | None) -> tuple[bytes, str]:
    """A result or chunk on the wire, or :class:`ResultError` saying why it cannot go (one rule for every
    transport: link, gRPC and HTTP all send what the engine encoded here)."""
    try:
        return codec.encode_value(value, content_type)
    except codec.NonFiniteError as exc:
        raise ResultError(f"{tool_name}: {what}{exc.where} is {exc.number!r}, {codec.NON_FINITE_RULE}") from None
    except codec.EncodeError as exc:
        raise ResultError(f"{tool_name}: {what} cannot be sent: {exc}") from None


def final_metadata(
    extra: Mapping[str, str] | None, started: float, worker_id: str, trace_id: str = ""
) -> dict[str, str]:
    meta: dict[str, str] = {}
    fill_final_metadata(meta, extra, started, worker_id, trace_id)
    return meta


def fill_final_metadata(
    meta: MutableMapping[str, str], extra: Mapping[str, str] | None, started: float, worker_id: str, trace_id: str
) -> None:
    """The final metadata into ``meta`` (a dict, or a response's protobuf map): the tool's own ``extra``, then
    Krait's keys, which win."""
    if extra:
        for key, value in extra.items():
            meta[key] = value
    meta["execution_time_ms"] = str(round((time.perf_counter() - started) * 1000))
    meta["tool_type"] = "remote"
    meta["worker_id"] = worker_id
    if trace_id:
        meta["trace_id"] = trace_id


def run_unary(adapter: BaseAdapter, spec: ToolSpec, kwargs: dict[str, Any], ctx: ToolContext, started: float) -> Any:
    """Run a non-streaming tool on this thread and build its response."""
    progress: list[dict[str, Any]] = []
    ctx.progress_sink = progress.append
    value = spec.func(adapter, **kwargs)
    if spec.is_async:
        value = aio_runner.run(value, ctx)
    check_input(ctx)
    content_type = None
    meta: dict[str, str] | None = None
    if isinstance(value, StreamChunk):
        value, content_type, meta = value.data, value.content_type, value.metadata
    data, content_type = _encode(spec.name, "result", value, content_type)
    response = pb.ExecuteToolResponse(data=data, content_type=content_type)
    # written into the response's map one entry at a time: a dict given to the constructor goes through
    # MutableMapping.update, a Python loop (~1.7 µs a call)
    out = response.metadata
    fill_final_metadata(out, meta, started, ctx.worker_id, ctx.trace_id)
    if progress:
        out["progress"] = codec.encode_json(progress[-1]).decode()
    return response


class StreamingCall:
    """Runs a streaming tool on its own thread, feeding a :class:`ChunkBuffer` (an async generator tool runs on
    the worker's event loop instead: :mod:`.aio_stream`)."""

    def __init__(
        self,
        adapter: BaseAdapter,
        spec: ToolSpec,
        kwargs: dict[str, Any],
        ctx: ToolContext,
        *,
        started: float,
        max_chunk_bytes: int,
        buffer: ChunkBuffer | None = None,
        frame_large: bool = False,
    ) -> None:
        self.adapter = adapter
        self.spec = spec
        self.kwargs = kwargs
        self.ctx = ctx
        self.started = started
        self.max_chunk_bytes = max_chunk_bytes
        self.buffer = buffer or ChunkBuffer()
        # queue large chunks already framed as batch entries (for ExecuteStreamingToolBatched only)
        self.frame_large = frame_large
        self._seq = 0
        self.nbytes = 0  # payload bytes queued so far (the engine's metrics read it)
        self._emit_lock = threading.Lock()
        ctx.progress_sink = self._progress
        # the tool's thread logs as part of the call (see logs.py): it runs in a copy of this thread's context
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._run,), name=f"tool-{spec.name}", daemon=True)

    def start(self) -> None:
        """Start a sync generator tool on its own thread (an async one is started by :mod:`.aio_stream`)."""
        self.thread.start()

    def cancel(self, reason: str = "CANCELLED") -> None:
        """The caller has gone (or its deadline passed: ``reason``): raise the flag and unblock the tool."""
        self.ctx.cancel_event.set(reason)
        self.buffer.cancel()

    def _chunk(self, item: Any) -> tuple[Chunk | bytes, int, bool]:
        """The queued form of a yielded item, its payload size, and whether it is the final chunk."""
        if type(item) in _PLAIN_JSON:  # the usual small chunk: straight to JSON, none of the checks below apply
            try:
                data = codec.encode_json(item)
            except codec.EncodeError:
                pass  # the full path below raises it as the call's error
            else:
                nbytes = len(data)
                if nbytes < LARGE and nbytes <= self.max_chunk_bytes:
                    if self.frame_large:  # a batched transport: framed now, the batch only joins entries
                        return frame_json(self._seq, data), nbytes, False
                    data = _pooled(data) if nbytes < _SMALL_COPY else data
                    return (self._seq, data, codec.JSON, False, None), nbytes, False
        if isinstance(item, StreamChunk):
            value, content_type, is_final = item.data, item.content_type, item.is_final
            meta = dict(item.metadata) if item.metadata else None
        else:
            value, content_type, meta, is_final = item, None, None, False
        parts: tuple[bytes, memoryview] | None = None
        if isinstance(value, np.ndarray) and content_type in (None, codec.NPY):
            try:
                parts, content_type = codec.npy_parts(value), codec.NPY
            except codec.EncodeError as exc:
                raise ResultError(f"{self.spec.name}: chunk {self._seq} cannot be sent: {exc}") from None
            nbytes = len(parts[0]) + parts[1].nbytes
        else:
            data, content_type = _encode(self.spec.name, f"chunk {self._seq}", value, content_type)
            nbytes = len(data)
        if nbytes > self.max_chunk_bytes:
            raise CallError(
                f"{self.spec.name}: chunk {self._seq} holds {nbytes} bytes, more than the worker's maximum"
                f" message size ({self.max_chunk_bytes} bytes); yield smaller chunks or raise --max-message-mb",
                error_type="ChunkTooLarge",
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        # A large payload is framed now, while the tool is paused at its yield (its array may change once it
        # resumes): for an array that copy is the only one of its data, as a batch holding one framed entry is
        # that entry. A final chunk stays a tuple: its metadata is completed when the tool ends.
        if self.frame_large and not is_final and nbytes >= LARGE:
            return frame(self._seq, parts or (data,), content_type, False, meta), nbytes, False
        if parts is not None:
            data = b"".join(parts)
        return (self._seq, data, content_type, is_final, meta), nbytes, is_final

    def _emit(self, chunk: Chunk | bytes, nbytes: int) -> None:
        self.buffer.put(chunk, nbytes)
        self._seq += 1
        self.nbytes += nbytes

    def _emit_nowait(self, chunk: Chunk | bytes, nbytes: int) -> None:
        self.buffer.put_nowait(chunk, nbytes)
        self._seq += 1
        self.nbytes += nbytes

    def after_final_message(self, final_seq: int) -> str:
        return (
            f"{self.spec.name} yielded after its final chunk (seq {final_seq}); the final chunk must be"
            " the last thing a tool yields"
        )

    def final_meta(self, meta: Mapping[str, str] | None) -> dict[str, str]:
        return final_metadata(meta, self.started, self.ctx.worker_id, self.ctx.trace_id)

    def _progress(self, event: dict[str, Any]) -> None:
        data = codec.encode_json(event)
        with self._emit_lock:
            self._emit((self._seq, data, codec.JSON, False, {"krait.event": "progress"}), len(data))

    def _run(self) -> None:
        error: BaseException | None = None
        iterator: Iterator[Any] | None = None
        try:
            iterator = _as_iterator(self.spec, self.spec.func(self.adapter, **self.kwargs))
            final: Chunk | None = None
            put, lock = self.buffer.put, self._emit_lock
            for item in iterator:
                with lock:
                    chunk, nbytes, is_final = self._chunk(item)
                    if is_final:
                        assert isinstance(chunk, tuple)
                        final = chunk
                        break
                    put(chunk, nbytes)  # self._emit, inlined: once per chunk
                    self._seq += 1
                    self.nbytes += nbytes
            if final is not None:
                # the call ends when the tool ends: look for a (forbidden) yield after the final chunk
                for _extra in iterator:
                    raise ProtocolViolation(self.after_final_message(final[0]))
                check_input(self.ctx)
                seq, data, content_type, _, meta = final
            else:
                check_input(self.ctx)
                seq, data, content_type, meta = self._seq, b"", "", {"synthetic_final": "true"}
            with self._emit_lock:
                meta = self.final_meta(meta)
                self._emit((seq, data, content_type, True, meta), len(data))
        except Cancelled:
            log.info("%s cancelled by the caller", self.spec.name)
        except BaseException as exc:
            error = exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # runs the generator's finally block, on this thread
                except Exception as exc:
                    log.exception("%s raised while closing", self.spec.name)
                    error = error or exc
            self.buffer.finish(error)


# values a chunk encodes as JSON whatever else it could be (not arrays, bytes, frames or StreamChunks)
_PLAIN_JSON = frozenset({dict, list, str, int, float, bool, type(None)})
# Python's small-object allocator takes objects up to 512 bytes; orjson's output is allocated elsewhere, from a
# large buffer shrunk to fit, and thousands of them held in a stream's buffer cost a page fault each (measured:
# ~1 fault and ~3 µs of CPU per held chunk, ~0.5 µs with the copy)
_SMALL_COPY = 512


def _pooled(data: bytes) -> bytes:
    """A copy of a small encoded chunk in Python's own allocator (see _SMALL_COPY); the original is freed at once."""
    return b"%b" % (data,)  # a new bytes object (bytes(data) would return data itself), made in C


def _as_iterator(spec: ToolSpec, result: Any) -> Iterator[Any]:
    # a dict or str returned by mistake must never be streamed key by key or character by character
    if isinstance(result, (str, bytes, bytearray, memoryview, Mapping)) or not hasattr(result, "__iter__"):
        raise ProtocolViolation(
            f"streaming tool {spec.name} returned {type(result).__name__}, not an iterator: yield its chunks"
        )
    return iter(result)
