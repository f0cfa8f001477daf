"""The worker's event loop: where ``async def`` tools and async generator tools run.

One asyncio loop per worker process, on its own thread, started by the first async call (a worker of sync
tools never has one). gRPC threads hand coroutines to it and wait for their results; a sync tool never runs
on it, so a blocking sync tool cannot stall async ones. Async tools run concurrently, bounded by the
server's ``--max-calls`` slots like every call.

Cancellation: the call's :class:`~python_worker.sdk.context.CancelEvent` cancels the tool's task, so
``asyncio.CancelledError`` is raised at the tool's current ``await`` and its ``finally`` runs; the gRPC thread
waits until the task has really ended, so a call's slot is freed only after the tool's cleanup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

from .. import tracing
from ..errors import CallError
from ..sdk import ToolContext

log = logging.getLogger("krait.worker")

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The worker's event loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            new_loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(ready.set)
                new_loop.run_forever()

            _thread = threading.Thread(target=run, name="krait-event-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new_loop
        return _loop


async def cancellable(coro: Coroutine[Any, Any, T], ctx: ToolContext) -> T:
    """Await ``coro`` in the current task, cancelling the task when the call is cancelled."""
    running = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    remove = ctx.cancel_event.add_callback(lambda: running.call_soon_threadsafe(task.cancel))
    try:
        with tracing.span_current(ctx):  # the task runs in the loop's context, not the engine thread's
            return await coro
    finally:
        remove()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` as a task on the worker's loop (from any thread but the loop's)."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T], ctx: ToolContext) -> T:
    """Run an async tool's coroutine on the worker's loop and wait for its value (on a gRPC thread).
    Raises the tool's exception, or a CANCELLED :class:`CallError` when the call was cancelled and the tool
    let the cancellation through."""
    future = submit(cancellable(coro, ctx))
    try:
        error = future.exception()
    except concurrent.futures.CancelledError:
        log.info("%s cancelled", ctx.tool_name)
        raise CallError(
            f"{ctx.tool_name} was cancelled", code=grpc.StatusCode.CANCELLED, error_type="ToolCancelled"
        ) from None
    if error is not None:
        # raised as it was on the loop: its traceback starts at the tool, not in concurrent.futures
        raise error
    return future.result()


def shutdown(timeout: float = 2.0) -> None:
    """Cancel what still runs on the loop, give it ``timeout`` seconds to finish, then stop the loop."""
    global _loop, _thread
    with _lock:
        current, thread = _loop, _thread
        _loop = _thread = None
    if current is None or current.is_closed():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("async task %s did not finish within %.1f s of shutdown", task.get_name(), timeout)
        await current.shutdown_asyncgens()

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), current).result(timeout + 1)
    except (concurrent.futures.TimeoutError, RuntimeError):
        log.warning("the event loop did not shut down cleanly")
    current.call_soon_threadsafe(current.stop)
    if thread is not None:
        thread.join(timeout)
    if thread is None or not thread.is_alive():
        current.close()
