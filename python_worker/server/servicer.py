"""ToolWorkerServicer: the ``krait.v1.ToolWorker`` gRPC service over one adapter instance."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from ..errors import CallError, Overloaded, to_status
from ..proto import pb, pb_grpc
from ..sdk import BaseAdapter
from .buffer import Cancelled, ChunkBuffer
from .call import StreamingCall, prepare, run_unary
from .sessions import SessionStore
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
                result_schema_json=json.dumps(spec.result_schema) if spec.result_schema is not None else "",
            )
            for spec in sorted(self.specs.values(), key=lambda s: s.name)
        ]
        return pb.ListToolsResponse(tools=tools, worker_id=self.worker_id, adapter=self.adapter_path)

    def InitializeSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.session_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id must not be empty")
        return pb.InitializeSessionResponse(
            created=self.sessions.initialize(request.session_id, dict(request.metadata))
        )

    def CleanupSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.CleanupSessionResponse(existed=self.sessions.cleanup(request.session_id))

    # -- tool calls ---------------------------------------------------------------------------------------
    def _abort(self, context: grpc.ServicerContext, exc: BaseException, tool_name: str) -> None:
        if not isinstance(exc, CallError):
            log.error("%s failed", tool_name, exc_info=exc)
        context.abort_with_status(to_status(exc, tool_name=tool_name, worker_id=self.worker_id))

    def _acquire(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"worker {self.worker_id} is running its maximum of {self.max_calls} calls")

    def ExecuteTool(self, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            self._acquire()
        except CallError as exc:
            self._abort(context, exc, request.tool_name)
        try:
            spec, kwargs, ctx = prepare(
                request, specs=self.specs, streaming=False, sessions=self.sessions, worker_id=self.worker_id
            )
            context.add_callback(ctx.cancel_event.set)
            # headers go out before the tool runs: a client that saw none knows the call never started
            context.send_initial_metadata(())
            return run_unary(self.adapter, spec, kwargs, ctx, started)
        except Exception as exc:
            self._abort(context, exc, request.tool_name)
        finally:
            self._slots.release()

    def ExecuteStreamingTool(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for batch in self._stream(request, context, max_chunks=1, frame_large=False):
            seq, data, content_type, is_final, meta = batch[0]
            yield pb.ToolChunk(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)

    def ExecuteStreamingToolBatched(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        # already serialized: registered with a pass-through serializer (see register())
        for batch in self._stream(request, context, max_chunks=BATCH_MAX_CHUNKS, frame_large=True):
            yield encode_batch(batch)

    def _stream(
        self, request: Any, context: grpc.ServicerContext, *, max_chunks: int, frame_large: bool
    ) -> Iterator[list[Any]]:
        started = time.perf_counter()
        try:
            self._acquire()
        except CallError as exc:
            self._abort(context, exc, request.tool_name)
        call: StreamingCall | None = None
        try:
            spec, kwargs, ctx = prepare(
                request, specs=self.specs, streaming=True, sessions=self.sessions, worker_id=self.worker_id
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
            self._abort(context, exc, request.tool_name)
        finally:
            if call is not None:
                call.cancel()  # no-op after a normal end; stops the tool if the stream was abandoned
            self._slots.release()


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
            getattr(servicer, method.name),
            request_deserializer=request_type.FromString,
            response_serializer=None if method.name in PRESERIALIZED else response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
