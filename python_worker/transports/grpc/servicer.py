"""ToolWorkerServicer: the ``krait.v1.ToolWorker`` gRPC service over one adapter instance."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ...engine import Engine, StreamHandle
from ...engine.requests import Malformed, deserializer
from ...errors import CallError, InvalidArguments
from ...proto import pb, pb_grpc
from ...sdk import ToolContext
from ...wire import encode_batch

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
    """The gRPC front of an :class:`~python_worker.engine.Engine`: each RPC hands its request to the engine,
    hooks the RPC's cancellation to the call, and turns what ends the call into the RPC's status."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- small RPCs ---------------------------------------------------------------------------------------
    def Ping(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.engine.ping(request)

    def ListTools(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.engine.list_tools(request)

    def Metrics(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.engine.metrics_text(request)

    def InitializeSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.engine.initialize_session(request)
        except CallError as exc:
            context.abort_with_status(self.engine.status(exc, "InitializeSession"))

    def CleanupSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.engine.cleanup_session(request)
        except CallError as exc:
            context.abort_with_status(self.engine.status(exc, "CleanupSession"))

    def refuse_malformed(self, rpc: str, request: Malformed, context: grpc.ServicerContext) -> None:
        context.abort_with_status(self.engine.status(InvalidArguments(request.reason), rpc))

    # -- tool calls ---------------------------------------------------------------------------------------
    def ExecuteTool(self, request: Any, context: grpc.ServicerContext) -> Any:
        def ready(ctx: ToolContext) -> None:
            context.add_callback(lambda: ctx.cancel_event.set(_ended_by(context)))
            # headers go out before the tool runs: a client that saw none knows the call never started
            context.send_initial_metadata(())

        try:
            return self.engine.execute(request, _metadata(context), on_ready=ready)
        except Exception as exc:
            context.abort_with_status(self.engine.status(exc, "ExecuteTool", request.tool_name))

    def ExecuteStreamingTool(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for batch in self._stream(request, context, rpc="ExecuteStreamingTool", batched=False):
            seq, data, content_type, is_final, meta = batch[0]
            yield pb.ToolChunk(seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta)

    def ExecuteStreamingToolBatched(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        # already serialized: registered with a pass-through serializer (see register())
        for batch in self._stream(request, context, rpc="ExecuteStreamingToolBatched", batched=True):
            yield encode_batch(batch)

    def _stream(self, request: Any, context: grpc.ServicerContext, *, rpc: str, batched: bool) -> Iterator[list[Any]]:
        handle: StreamHandle | None = None
        try:
            handle = self.engine.stream(request, _metadata(context), frame_large=batched)
            # fires when the RPC ends for any reason: client cancel, disconnect, deadline, or normal end
            context.add_callback(lambda: handle.cancel(_ended_by(context)))
            # headers go out before the tool runs: a client that saw none knows the call never started
            context.send_initial_metadata(())
            handle.start()
            yield from handle.batches(batched=batched)
        except Exception as exc:
            context.abort_with_status(self.engine.status(exc, rpc, request.tool_name))
        finally:
            if handle is not None:
                handle.close()


def _ended_by(context: grpc.ServicerContext) -> str:
    """Why an RPC that ended before its tool did was cut short: its deadline, or its client."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}


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
