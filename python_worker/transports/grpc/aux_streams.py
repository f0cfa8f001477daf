"""Budgets for the worker's non-tool streams: reflection's ServerReflectionInfo and health's Watch, each its own.

On ``grpc.aio`` an open stream holds no thread, but it holds memory and a place in whatever the worker allows,
and these streams are not tool calls, so ``--max-calls`` does not count them. Each service gets a small budget
of its own: health's Watch needs no token (probes carry none), so an unauthenticated client can fill health's
budget, and only health's: reflection's (behind the token) stays free, and neither touches the tool calls'
slots or Ping. A stream beyond its service's budget is refused at once with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger("krait.worker")

Context = aio.ServicerContext[Any, Any]

# what grpcurl, a health watcher and a debugging session need at once, with room to spare (per service)
MAX_AUX_STREAMS = 8

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


class _Budget:
    """Streams open at once for one service (counted on the event loop's thread: no lock)."""

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        self.open = 0


class AuxStreamLimit(aio.ServerInterceptor):
    """Refuses streams of health (Watch) and reflection beyond ``limit`` open at once, per service."""

    def __init__(self, limit: int = MAX_AUX_STREAMS) -> None:
        health = _Budget("health-watch", limit)
        reflection = _Budget("reflection", limit)
        self._budgets = {f"/{HEALTH_SERVICE}/": health} | {f"/{name}/": reflection for name in REFLECTION_SERVICES}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not handler.response_streaming:
            return handler  # unary (a health Check): a coroutine for a moment, like Ping
        budget = self._budgets.get(method[: method.rfind("/") + 1])
        if budget is None:
            return handler
        if handler.request_streaming:
            return handler._replace(stream_stream=_limited(budget, method, handler.stream_stream))
        return handler._replace(unary_stream=_limited(budget, method, handler.unary_stream))


def _limited(budget: _Budget, method: str, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    async def admit(context: Context) -> None:
        if budget.open >= budget.limit:
            log.warning("%s refused: RESOURCE_EXHAUSTED, %d such streams are open", method, budget.limit)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this worker serves at most {budget.limit} {budget.what} streams at once",
            )
        budget.open += 1

        def release(_context: Any) -> None:
            budget.open -= 1

        # when the RPC ends, however it ends (a stream left suspended at a yield is closed only later)
        context.add_done_callback(release)  # type: ignore[arg-type]  # stub: a class

    if inspect.isasyncgenfunction(behavior):  # reflection: an async generator

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await admit(context)
            async for message in behavior(request, context):
                yield message

        return stream

    async def writing(request: Any, context: Context) -> None:  # health's Watch: context.write()
        await admit(context)
        await behavior(request, context)

    return writing
