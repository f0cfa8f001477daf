"""Async generator tools: driven on the worker's event loop, feeding the call's bounded buffer.

The same rules as sync streams (:mod:`python_worker.engine.call`): one chunk per yield, the final chunk held
until the generator has returned, a yield after it fails the call. What differs is waiting: the loop must
never block, so when the buffer is full the driver awaits room (the consumer's thread wakes it) while the
generator stays suspended at its ``yield``: a slow consumer pauses it and memory stays bounded. A chunk is
encoded only once there is room, so nothing else (a progress report) can take its place in the order.

Cancellation cancels the driver's task: a generator running between yields gets ``asyncio.CancelledError``
at its ``await``; one suspended at a ``yield`` is closed (``GeneratorExit`` there). Its ``finally`` runs on the
loop either way, before the call's slot is freed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from .. import codec, tracing
from ..errors import ProtocolViolation
from ..wire import Chunk
from . import aio_runner
from .buffer import Cancelled
from .call import StreamingCall
from .exchange import check_input

log = logging.getLogger("krait.worker")


def start(call: StreamingCall) -> None:
    """Start the async generator tool of ``call`` on the worker's loop."""
    aio_runner.submit(_traced(call))


async def _traced(call: StreamingCall) -> None:
    with tracing.span_current(call.ctx):  # the task runs in the loop's context, not the engine thread's
        await _drive(call)


async def _drive(call: StreamingCall) -> None:
    loop = asyncio.get_running_loop()
    room = asyncio.Event()
    call.buffer.on_room = lambda: loop.call_soon_threadsafe(room.set)
    call.ctx.progress_sink = lambda event: _progress(call, event)
    generator: Any = None
    error: BaseException | None = None

    async def wait_room() -> None:
        while True:
            room.clear()
            if call.buffer.has_room():
                return
            await room.wait()

    async def emit(item: Any) -> tuple[Chunk, bool] | None:
        """Queue ``item`` once there is room; a final chunk is returned instead (its metadata comes last)."""
        await wait_room()
        with call._emit_lock:
            chunk, nbytes, is_final = call._chunk(item)
            if is_final:
                assert isinstance(chunk, tuple)
                return chunk, True
            call._emit_nowait(chunk, nbytes)
        return None

    async def body() -> None:
        nonlocal generator
        generator = call.spec.func(call.adapter, **call.kwargs)
        if not isinstance(generator, AsyncIterator):
            raise ProtocolViolation(
                f"streaming tool {call.spec.name} returned {type(generator).__name__}, not an async iterator"
            )
        final: Chunk | None = None
        async for item in generator:
            held = await emit(item)
            if held is not None:
                final = held[0]
                break
        if final is not None:
            async for _extra in generator:
                raise ProtocolViolation(call.after_final_message(final[0]))
            check_input(call.ctx)
            seq, data, content_type, _, meta = final
        else:
            check_input(call.ctx)
            seq, data, content_type, meta = call._seq, b"", "", {"synthetic_final": "true"}
        await wait_room()
        with call._emit_lock:
            meta = call.final_meta(meta)
            call._emit_nowait((seq, data, content_type, True, meta), len(data))

    try:
        await aio_runner.cancellable(body(), call.ctx)
    except Cancelled:
        log.info("%s cancelled by the caller", call.spec.name)
    except asyncio.CancelledError:
        log.info("%s cancelled", call.spec.name)
    except BaseException as exc:
        error = exc
    finally:
        aclose = getattr(generator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()  # runs the generator's finally block when it is suspended at a yield
            except Exception as exc:
                log.exception("%s raised while closing", call.spec.name)
                error = error or exc
        call.buffer.finish(error)


def _progress(call: StreamingCall, event: dict[str, Any]) -> None:
    # never blocks the loop: a progress report is queued even when the buffer is full (it is small, and the
    # tool's next yield waits for room)
    data = codec.encode_json(event)
    with call._emit_lock:
        call._emit_nowait((call._seq, data, codec.JSON, False, {"krait.event": "progress"}), len(data))
