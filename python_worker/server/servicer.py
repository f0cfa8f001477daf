"""ToolWorkerServicer: the ``krait.v1.ToolWorker`` gRPC service over one adapter instance."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..errors import CallError, InvalidArguments, Overloaded, clip, to_status
from ..proto import pb, pb_grpc
from ..sdk import BaseAdapter, ToolContext
from .buffer import Cancelled, ChunkBuffer
from .call import StreamingCall, prepare, run_unary
from .logs import call_ended, call_id_from, in_call
from .requests import Malformed, deserializer
from .sessions import SessionStore, check_session_id
from .wire import encode_batch

log = logging.getLogger("krait.worker")

# One gRPC message carries at most this many chunks / bytes: big enough to amortise grpcio's per-message cost,
# small enough that the first chunks of a fast stream are not held back behind a huge batch.
BATCH_MAX_CHUNKS = 4096
BATCH_MAX_BYTES = 1 << 20
# What a stream may hold between its tool and gRPC before the tool blocks at its next yield: enough to keep a
# fast producer and the sender busy at once, and what bounds a worker's memory when the consumer is slow. A
# larger chunk still goes through, alone (ChunkBuffer admits any chunk into an empty buffer).
BUFFER_MAX_BYTES = 8 << 20


class ToolWorkerServicer(pb_grpc.ToolWorkerServicer):
    """Serves the tools of ``adapter``; at most ``max_calls`` tool calls run at once."""

    def __init__(
        self,
        adapter: BaseAdapter,
        *,
        adapter_path: str,
        worker_id: str,
        sessions: SessionStore,
        max_calls: int,
        max_message_bytes: int,
    ) -> None:
        self.adapter = adapter
        self.adapter_path = adapter_path
        self.worker_id = worker_id
        self.sessions = sessions
        self.specs = type(adapter).tool_specs()
        self.max_calls = max_calls
        self._slots = threading.BoundedSemaphore(max_calls)
        self._count_lock = threading.Lock()
        self._in_flight = 0
        # room for the message framing around a chunk's data
        self.max_chunk_bytes = max_message_bytes - 4096
        self._started = time.monotonic()

    # -- small RPCs ---------------------------------------------------------------------------------------
    def Ping(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.PingResponse(
            message=request.message,
            worker_id=self.worker_id,
            adapter=self.adapter_path,
            pid=os.getpid(),
            uptime_ms=int((time.monotonic() - self._started) * 1000),
        )

    def ListTools(self, request: Any, context: grpc.ServicerContext) -> Any:
        import json

        tools = [
            pb.ToolInfo(
                name=spec.name,
                description=spec.description,
                supports_streaming=spec.supports_streaming,
                parameters_schema_json=json.dumps(spec.json_schema()),
            )
            for spec in sorted(self.specs.values(), key=lambda s: s.name)
        ]
        return pb.ListToolsResponse(tools=tools, worker_id=self.worker_id, adapter=self.adapter_path)

    def InitializeSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if not request.session_id:
                raise InvalidArguments("session_id must not be empty")
            check_session_id(request.session_id)
        except CallError as exc:
            self._abort(context, exc, "InitializeSession")
        return pb.InitializeSessionResponse(
            created=self.sessions.initialize(request.session_id, dict(request.metadata))
        )

    def CleanupSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            check_session_id(request.session_id)
        except CallError as exc:
            self._abort(context, exc, "CleanupSession")
        return pb.CleanupSessionResponse(existed=self.sessions.cleanup(request.session_id))

    # -- tool calls ---------------------------------------------------------------------------------------
    def _abort(self, context: grpc.ServicerContext, exc: BaseException, rpc: str, tool_name: str = "") -> None:
        """End the RPC with the status reporting ``exc``. Expected failures (bad input, an overloaded worker)
        are logged as one warning line; a traceback is logged only for a bug in a tool or in Krait."""
        status = to_status(exc, tool_name=tool_name, worker_id=self.worker_id)
        what = f"{rpc} {clip(tool_name)}" if tool_name else rpc
        if isinstance(exc, CallError):
            log.warning("%s refused: %s %s", what, exc.code.name, status.details)
        elif type(exc).__name__ == "ToolCancelled":
            log.info("%s: the tool stopped on cancellation (%s)", what, exc)
        else:
            log.error("%s failed", what, exc_info=exc)
        context.abort_with_status(status)

    def refuse_malformed(self, rpc: str, request: Malformed, context: grpc.ServicerContext) -> None:
        self._abort(context, InvalidArguments(request.reason), rpc)

    def _acquire(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"worker {self.worker_id} is running its maximum of {self.max_calls} calls")
        with self._count_lock:
            self._in_flight += 1

    def _release(self) -> None:
        with self._count_lock:
            self._in_flight -= 1
        self._slots.release()

    def calls_in_flight(self) -> int:
        """Tool calls whose handlers have not returned (a unary tool deaf to cancellation stays counted)."""
        return self._in_flight

    def _begin(self, request: Any, context: grpc.ServicerContext) -> str:
        """Mark this thread's log records as the call's; returns its call id."""
        call_id = call_id_from(context.invocation_metadata())
        in_call(request.tool_name, request.session_id, call_id)
        return call_id

    def _end(self, ctx: ToolContext | None, acquired: bool) -> None:
        if ctx is not None and ctx.session is not None:
            self.sessions.release(ctx.session_id)
        if acquired:
            self._release()
        call_ended()

    def ExecuteTool(self, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        call_id = self._begin(request, context)
        ctx: ToolContext | None = None
        acquired = False
        try:
            self._acquire()
            acquired = True
            spec, kwargs, ctx = prepare(
                request,
                specs=self.specs,
                streaming=False,
                sessions=self.sessions,
                worker_id=self.worker_id,
                call_id=call_id,
            )
            context.add_callback(ctx.cancel_event.set)
            # headers go out before the tool runs: a client that saw none knows the call never started
            context.send_initial_metadata(())
            return run_unary(self.adapter, spec, kwargs, ctx, started)
        except Exception as exc:
            self._abort(context, exc, "ExecuteTool", request.tool_name)
        finally:
            self._end(ctx, acquired)

    def ExecuteStreamingTool(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for batch in self._stream(request, context, rpc="ExecuteStreamingTool", max_chunks=1, frame_large=False):
            seq, data, content_type, is_final, meta = batch[0]
            yield pb.ToolChunk(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)

    def ExecuteStreamingToolBatched(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        # already serialized: registered with a pass-through serializer (see register())
        stream = self._stream(
            request, context, rpc="ExecuteStreamingToolBatched", max_chunks=BATCH_MAX_CHUNKS, frame_large=True
        )
        for batch in stream:
            yield encode_batch(batch)

    def _stream(
        self, request: Any, context: grpc.ServicerContext, *, rpc: str, max_chunks: int, frame_large: bool
    ) -> Iterator[list[Any]]:
        started = time.perf_counter()
        call_id = self._begin(request, context)
        ctx: ToolContext | None = None
        acquired = False
        call: StreamingCall | None = None
        try:
            self._acquire()
            acquired = True
            spec, kwargs, ctx = prepare(
                request,
                specs=self.specs,
                streaming=True,
                sessions=self.sessions,
                worker_id=self.worker_id,
                call_id=call_id,
            )
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
            # fires when the RPC ends for any reason: client cancel, disconnect, deadline, or normal end
            context.add_callback(call.cancel)
            # headers go out before the tool runs: a client that saw none knows the call never started
            context.send_initial_metadata(())
            call.start()
            while True:
                batch = call.buffer.take(max_chunks, BATCH_MAX_BYTES)
                if batch is None:
                    return
                yield batch
        except Cancelled:
            return
        except Exception as exc:
            self._abort(context, exc, rpc, request.tool_name)
        finally:
            if call is not None:
                call.cancel()  # no-op after a normal end; stops the tool if the stream was abandoned
            self._end(ctx, acquired)


# methods whose handlers return serialized bytes (hand-encoded on the hot path)
PRESERIALIZED = frozenset({"ExecuteStreamingToolBatched"})


def register(servicer: ToolWorkerServicer, server: grpc.Server) -> None:
    """Add the service to ``server``, like the generated ``add_ToolWorkerServicer_to_server`` but with the
    batched stream's messages passed through as the bytes its handler already encoded."""
    service = pb.DESCRIPTOR.services_by_name["ToolWorker"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            _refusing_malformed(servicer, method.name, getattr(servicer, method.name)),
            request_deserializer=deserializer(request_type),
            response_serializer=None if method.name in PRESERIALIZED else response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _refusing_malformed(servicer: ToolWorkerServicer, rpc: str, behavior: Callable[[Any, Any], Any]) -> Any:
    # the deserializer hands over a Malformed instead of raising (see requests.py); a streaming behavior returns
    # its generator from here, so this wrapper adds no per-chunk cost
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            servicer.refuse_malformed(rpc, request, context)
        return behavior(request, context)

    return handle
