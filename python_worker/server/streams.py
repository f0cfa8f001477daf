"""A cap on the worker's non-tool streams (reflection's ServerReflectionInfo, health's Watch).

grpcio's sync server holds one pool thread per open stream for its whole life, and these streams are not tool
calls, so ``--max-calls`` does not count them: without a cap, a few dozen idle reflection streams from one
local client take every thread, and Ping and tool calls wait behind them. Streams of any service other than
``krait.v1.ToolWorker`` beyond the cap are refused at once with RESOURCE_EXHAUSTED; the server's pool has
room for the cap on top of the tool calls (see app.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

log = logging.getLogger("krait.worker")

# what grpcurl, a health watcher and a debugging session need at once, with room to spare
MAX_AUX_STREAMS = 8


class AuxStreamLimit(grpc.ServerInterceptor):
    """Refuses streams of services other than ``own_service`` beyond ``limit`` open at once."""

    def __init__(self, own_service: str, limit: int = MAX_AUX_STREAMS) -> None:
        self._own_prefix = f"/{own_service}/"
        self._limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._own_prefix):
            return handler
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=self._limited(method, handler.stream_stream))
        if handler.response_streaming:
            return handler._replace(unary_stream=self._limited(method, handler.unary_stream))
        return handler  # unary: a thread for a moment, like Ping

    def _limited(self, method: str, behavior: Callable[[Any, Any], Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not self._slots.acquire(blocking=False):
                log.warning("%s refused: RESOURCE_EXHAUSTED, %d such streams are open", method, self._limit)
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this worker serves at most {self._limit} reflection and health-watch streams at once",
                )
            try:
                yield from behavior(request, context)
            finally:
                self._slots.release()

        return run
