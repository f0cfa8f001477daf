"""The engine: one call's life, whatever transport brought it (the pool's local link, gRPC).

What a call does lives here once: the call slots (``--max-calls``), the log context, argument validation and
the tool's context, the tool's thread and its bounded buffer, final metadata, and how an exception becomes a
status (and a log line). A transport only reads requests, hands them to :meth:`Engine.execute` or
:meth:`Engine.stream`, lets the call know when its caller cancels, and writes what comes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from .. import tracing
from ..errors import CallError, InvalidArguments, Overloaded, as_call_error, clip, to_status, tool_traceback
from ..logs import CALL_ID_HEADER, CURRENT_CALL, CallInfo, call_ended, call_id_from, clean_call_id, in_call, with_trace
from ..metrics import UNKNOWN_TOOL, WorkerMetrics, exposition
from ..proto import pb
from ..sdk import BaseAdapter, InputError, ToolContext, ToolSpec
from . import aio_stream
from .buffer import Cancelled, ChunkBuffer
from .call import StreamingCall, prepare, run_unary
from .exchange import Exchange
from .requests import Malformed, deserializer
from .sessions import SessionStore, check_session_id

log = logging.getLogger("krait.worker")

# One message carries at most this many chunks / bytes: big enough to amortise a transport's per-message cost,
# small enough that the first chunks of a fast stream are not held back behind a huge batch.
BATCH_MAX_CHUNKS = 4096
BATCH_MAX_BYTES = 1 << 20
# What a stream may hold between its tool and its transport before the tool blocks at its next yield: enough to
# keep a fast producer and the sender busy at once, and what bounds a worker's memory when the consumer is slow.
# A larger chunk still goes through, alone (ChunkBuffer admits any chunk into an empty buffer).
BUFFER_MAX_BYTES = 8 << 20

_SMALL_REQUESTS = {
    "Ping": pb.PingRequest,
    "ListTools": pb.ListToolsRequest,
    "Metrics": pb.MetricsRequest,
    "InitializeSession": pb.InitializeSessionRequest,
    "CleanupSession": pb.CleanupSessionRequest,
}
_parse_tool_request = deserializer(pb.ExecuteToolRequest)


class StreamHandle:
    """A streaming call: :meth:`start` its tool, take its :meth:`batches`, :meth:`cancel` it when the caller
    goes, and always :meth:`close` it."""

    def __init__(
        self, engine: Engine, call: StreamingCall, acquired: bool, info: CallInfo, started: float, span: Any
    ) -> None:
        self._engine = engine
        self.call = call
        self.ctx = call.ctx
        self._acquired = acquired
        self._info = info
        self._started = started
        self._status: str | None = None  # the call's status code name, once its stream has ended
        self._counted = (0, 0)  # chunks and bytes already counted in the metrics
        self._span = span
        self._error: BaseException | None = None

    def start(self) -> None:
        if self.call.spec.is_async:
            aio_stream.start(self.call)  # on the worker's event loop
        else:
            self.call.start()  # on a thread of its own

    def cancel(self, reason: str = "CANCELLED") -> None:
        """Stop the tool: its caller went (``"CANCELLED"``) or its deadline passed (``"DEADLINE_EXCEEDED"``)."""
        self.call.cancel(reason)

    def batches(self, *, batched: bool = True) -> Iterator[list[Any]]:
        """Lists of queued chunks, whatever is ready (one chunk each when not ``batched``), until the tool ends;
        the tool's error is raised after its last chunk. Ends quietly once cancelled."""
        max_chunks = BATCH_MAX_CHUNKS if batched else 1
        metrics = self._engine.metrics
        try:
            while (batch := self.call.buffer.take(max_chunks, BATCH_MAX_BYTES)) is not None:
                if metrics is not None:
                    self._count(metrics)
                yield batch
            self._status = self._cancelled() if self.ctx.cancel_event.is_set() else "OK"
        except Cancelled:
            self._status = self._cancelled()
            return
        except GeneratorExit:  # the transport stopped taking batches: its caller went
            self._status = self._cancelled()
            raise
        except BaseException as exc:
            self._status = status_name(exc)
            self._error = exc
            _tag(exc, self._info)
            raise

    def _cancelled(self) -> str:
        return self.ctx.cancel_event.reason or "CANCELLED"

    def _count(self, metrics: WorkerMetrics) -> None:
        chunks, nbytes = self.call._seq, self.call.nbytes
        metrics.stream_sent(self.ctx.tool_name, chunks - self._counted[0], nbytes - self._counted[1])
        self._counted = (chunks, nbytes)

    def close(self) -> None:
        self.call.cancel()  # no-op after a normal end; stops the tool if the stream was abandoned
        metrics = self._engine.metrics
        if metrics is not None:
            self._count(metrics)
            # a stream its transport stopped taking (the caller went) ends cancelled
            metrics.call_ended(
                self.ctx.tool_name, self._status or self._cancelled(), time.perf_counter() - self._started
            )
        if self._span is not None:
            self._span.end(self._status or self._cancelled(), self._error, self.call._seq, self.call.nbytes)
        self._engine._end(self.ctx, self._acquired)


class Engine:
    """Runs the tools of ``adapter`` for any transport; at most ``max_calls`` tool calls at once."""

    def __init__(
        self,
        adapter: BaseAdapter,
        *,
        adapter_path: str,
        worker_id: str,
        sessions: SessionStore,
        max_calls: int,
        max_message_bytes: int,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.adapter = adapter
        self.metrics = metrics
        self.adapter_path = adapter_path
        self.worker_id = worker_id
        self.sessions = sessions
        self.specs = type(adapter).tool_specs()
        self.max_calls = max_calls
        # the call slots: a count under a lock (a BoundedSemaphore is a Python-level Condition: ~3x the cost)
        self._count_lock = threading.Lock()
        self._in_flight = 0
        # room for the message framing around a chunk's data
        self.max_chunk_bytes = max_message_bytes - 4096
        self._started = time.monotonic()
        self.tracing = tracing.available()
        if metrics is not None:
            metrics.watch(self.calls_in_flight, lambda: len(sessions))

    # -- small calls ----------------------------------------------------------------------------------------
    def ping(self, request: Any) -> Any:
        return pb.PingResponse(
            message=request.message,
            worker_id=self.worker_id,
            adapter=self.adapter_path,
            pid=os.getpid(),
            uptime_ms=int((time.monotonic() - self._started) * 1000),
        )

    def list_tools(self, request: Any = None) -> Any:
        tools = [
            pb.ToolInfo(
                name=spec.name,
                description=spec.description,
                supports_streaming=spec.supports_streaming,
                parameters_schema_json=json.dumps(spec.json_schema()),
                result_schema_json=json.dumps(spec.result_schema) if spec.result_schema is not None else "",
                input_schema_json=json.dumps(spec.input.schema) if spec.input is not None else "",
                input_param=spec.input.param if spec.input is not None else "",
            )
            for spec in sorted(self.specs.values(), key=lambda s: s.name)
        ]
        return pb.ListToolsResponse(tools=tools, worker_id=self.worker_id, adapter=self.adapter_path)

    def metrics_text(self, request: Any = None) -> Any:
        """This worker's metrics registry in Prometheus' text format (empty when it counts nothing)."""
        text = exposition(self.metrics.registry).decode() if self.metrics is not None else ""
        return pb.MetricsResponse(text=text)

    def initialize_session(self, request: Any) -> Any:
        if not request.session_id:
            raise InvalidArguments("session_id must not be empty")
        check_session_id(request.session_id)
        return pb.InitializeSessionResponse(
            created=self.sessions.initialize(request.session_id, dict(request.metadata))
        )

    def cleanup_session(self, request: Any) -> Any:
        check_session_id(request.session_id)
        return pb.CleanupSessionResponse(existed=self.sessions.cleanup(request.session_id))

    def small_call(self, method: str, payload: bytes) -> Any:
        """A non-tool call by its ``ToolWorker`` method name, from its serialized request."""
        request_type = _SMALL_REQUESTS.get(method)
        if request_type is None:
            raise CallError(f"unknown method {clip(method)!r}", code=grpc.StatusCode.UNIMPLEMENTED)
        request = _checked(deserializer(request_type)(payload))
        handler: Callable[[Any], Any] = {
            "Ping": self.ping,
            "ListTools": self.list_tools,
            "Metrics": self.metrics_text,
            "InitializeSession": self.initialize_session,
            "CleanupSession": self.cleanup_session,
        }[method]
        return handler(request)

    def parse_request(self, payload: bytes) -> Any:
        """An ``ExecuteToolRequest`` from its bytes; malformed input (invalid UTF-8...) is INVALID_ARGUMENT."""
        return _checked(_parse_tool_request(payload))

    # -- tool calls -----------------------------------------------------------------------------------------
    def execute(
        self,
        request: Any,
        metadata: Mapping[str, str],
        *,
        on_ready: Callable[[ToolContext], None] = lambda ctx: None,
        exchange: Exchange | None = None,
    ) -> Any:
        """Run a unary tool on this thread; ``on_ready(ctx)`` is called once the call is accepted, before the tool
        runs (to hook up cancellation and tell the caller it started). Raises what ends the call."""
        started = time.perf_counter()
        info, accepted, span = self._accept(request, metadata, streaming=False, started=started, exchange=exchange)
        ctx = accepted[2]
        status, error = "OK", None
        try:
            on_ready(ctx)
            response = run_unary(self.adapter, accepted[0], accepted[1], ctx, started)
            if ctx.cancel_event.is_set():  # the transport answers CANCELLED or DEADLINE_EXCEEDED
                status = ctx.cancel_event.reason or "CANCELLED"
            return response
        except BaseException as exc:
            status, error = status_name(exc), exc
            if status == "CANCELLED":  # the tool stopped on the flag: the flag says why
                status = ctx.cancel_event.reason or status
            _tag(exc, info)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.call_ended(ctx.tool_name, status, time.perf_counter() - started)
            if span is not None:
                span.detach()
                span.end(status, error)
            self._end(ctx, True)

    def stream(
        self, request: Any, metadata: Mapping[str, str], *, frame_large: bool, exchange: Exchange | None = None
    ) -> StreamHandle:
        """Accept a streaming call (its tool starts with :meth:`StreamHandle.start`). ``frame_large``: queue large
        chunks already framed as batch entries (for batched transports). Raises what refuses the call."""
        started = time.perf_counter()
        info, (spec, kwargs, ctx), span = self._accept(
            request, metadata, streaming=True, started=started, exchange=exchange
        )
        try:
            # the tool's thread starts in a copy of this thread's context: the span (attached) is current there
            call = StreamingCall(
                self.adapter,
                spec,
                kwargs,
                ctx,
                started=started,
                max_chunk_bytes=self.max_chunk_bytes,
                frame_large=frame_large,
                buffer=ChunkBuffer(max_chunks=2 * BATCH_MAX_CHUNKS, max_bytes=BUFFER_MAX_BYTES),
            )
        finally:
            if span is not None:
                span.detach()
        return StreamHandle(self, call, True, info, started, span)

    def _accept(
        self,
        request: Any,
        metadata: Mapping[str, str],
        *,
        streaming: bool,
        started: float,
        exchange: Exchange | None,
    ) -> tuple[CallInfo, tuple[ToolSpec, dict[str, Any], ToolContext], Any]:
        """Mark the call in the log, open its span (attached to this thread), take a call slot, resolve the tool
        and validate its arguments; whatever refuses the call is counted and raised with nothing left held."""
        info = self._begin(request, metadata)
        acquired = False
        span = self._span(request, metadata, info) if self.tracing else None
        if span is not None and span.trace_id:
            info = with_trace(info, span.trace_id)
        try:
            self._acquire()
            acquired = True
            prepared = prepare(
                request,
                specs=self.specs,
                streaming=streaming,
                sessions=self.sessions,
                worker_id=self.worker_id,
                call_id=info.call_id,
                exchange=exchange,
            )
            if span is not None:
                prepared[2]._call_span, prepared[2].trace_id = span, span.trace_id
        except BaseException as exc:
            if self.metrics is not None:
                self.metrics.call_ended(self._tool_label(request), status_name(exc), time.perf_counter() - started)
            if span is not None:
                span.detach()
                span.end(status_name(exc), exc)
            _tag(exc, info)
            if exchange is not None:
                exchange.close()
            self._end(None, acquired)
            raise
        return info, prepared, span

    def calls_in_flight(self) -> int:
        """Tool calls not yet over (a unary tool deaf to cancellation stays counted)."""
        return self._in_flight

    # -- errors ---------------------------------------------------------------------------------------------
    def status(self, exc: BaseException, rpc: str, tool_name: str = "") -> grpc.Status:
        """The status that reports ``exc``, logged: refusals (bad input, an overloaded worker) as one warning line;
        a tool's exception as one error line, its traceback (the tool's frames, never the worker's: the caller
        has it too) at debug; a failure of Krait itself with its whole traceback."""
        exc = as_call_error(exc)
        status = to_status(exc, tool_name=tool_name, worker_id=self.worker_id)
        what = f"{rpc} {clip(tool_name)}" if tool_name else rpc
        # logged as the call's, although the call is over by now
        token = CURRENT_CALL.set(getattr(exc, "_krait_call", None) or CURRENT_CALL.get())
        try:
            if isinstance(exc, CallError):
                log.warning("%s refused: %s %s", what, exc.code.name, status.details)
            elif type(exc).__name__ == "ToolCancelled":
                log.info("%s: the tool stopped on cancellation (%s)", what, exc)
            elif isinstance(exc, InputError):  # the caller's failure, which the caller reports
                log.info("%s: the caller's input failed: %s", what, clip(str(exc), 500))
            elif (trace := tool_traceback(exc)) is not None:
                log.error("%s failed: %s: %s", what, type(exc).__name__, clip(str(exc), 500))
                log.debug("%s: the tool's traceback:\n%s", what, trace.rstrip())
            else:
                log.error("%s failed", what, exc_info=exc)
        finally:
            CURRENT_CALL.reset(token)
        return status

    def status_bytes(self, exc: BaseException, rpc: str, tool_name: str = "") -> bytes:
        """:meth:`status` as a serialized ``google.rpc.Status`` (what grpc-status-details-bin holds)."""
        status = self.status(exc, rpc, tool_name)
        for key, value in status.trailing_metadata or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                return value
        raise AssertionError("to_status always sets grpc-status-details-bin")

    # -- internals ------------------------------------------------------------------------------------------
    def _begin(self, request: Any, metadata: Mapping[str, str]) -> CallInfo:
        """Mark this thread's log records as the call's."""
        given = metadata.get(CALL_ID_HEADER)
        call_id = clean_call_id(given) if isinstance(given, str) else call_id_from(None)
        return in_call(request.tool_name, request.session_id, call_id)

    def _span(self, request: Any, metadata: Mapping[str, str], info: CallInfo) -> Any:
        span = tracing.start(
            self._tool_label(request),
            metadata,
            worker_id=self.worker_id,
            session_id=request.session_id,
            call_id=info.call_id,
        )
        if span is not None:
            span.attach()  # detached once the call's tool has started (stream) or ended (unary)
        return span

    def _tool_label(self, request: Any) -> str:
        return request.tool_name if request.tool_name in self.specs else UNKNOWN_TOOL

    def _acquire(self) -> None:
        with self._count_lock:
            if self._in_flight < self.max_calls:
                self._in_flight += 1
                return
        raise Overloaded(f"worker {self.worker_id} is running its maximum of {self.max_calls} calls")

    def _end(self, ctx: ToolContext | None, acquired: bool) -> None:
        if ctx is not None and isinstance(ctx._caller, Exchange):
            ctx._caller.close()
        if ctx is not None and ctx.session is not None:
            self.sessions.release(ctx.session_id)
        if acquired:
            with self._count_lock:
                if self._in_flight <= 0:  # what BoundedSemaphore.release raised: a slot released twice
                    raise ValueError("a call slot released more often than taken")
                self._in_flight -= 1
        call_ended()


def _checked(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidArguments(request.reason)
    return request


def status_name(exc: BaseException) -> str:
    """The name of the gRPC status code that reports ``exc`` (as :func:`..errors.to_status` decides it)."""
    exc = as_call_error(exc)
    if isinstance(exc, CallError):
        return str(exc.code.name)
    if type(exc).__name__ == "ToolCancelled":
        return "CANCELLED"
    return "UNKNOWN"


def _tag(exc: BaseException, info: CallInfo) -> None:
    # the status of a failed call is logged once the call is over: the record still names the call
    if getattr(exc, "_krait_call", None) is None:
        with contextlib.suppress(AttributeError):  # an exception type with __slots__
            exc._krait_call = info  # type: ignore[attr-defined]
