"""ToolContext: what a running tool may know about its call and do besides yielding."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("krait.worker")


class ToolCancelled(Exception):
    """Raised by :meth:`ToolContext.check_cancelled` once the caller has gone or the deadline has passed."""


class InputError(Exception):
    """Raised by a tool's input iterator when the caller's input failed (an Elixir enumerable raised, a Python
    iterable raised): the message is the caller's. The call is over for the caller already; a tool that catches
    it may still clean up."""


class HandlerError(Exception):
    """Raised by :meth:`ToolContext.call` / :meth:`ToolContext.acall` when the caller could not answer.

    ``type`` says why: ``HandlerNotFound`` (the caller has no handler of that name), ``HandlerFailed`` (it
    returned an error or raised), ``HandlerRaised`` / ``HandlerThrew`` / ``HandlerExited`` (an Elixir handler
    raised, threw or exited), ``HandlerTimeout`` (no answer within the timeout), ``HandlersUnavailable`` (the
    call came by a transport that carries no handler calls: a plain unary or server-streaming RPC, an HTTP POST
    or SSE). ``message`` is the caller's own text."""

    def __init__(self, handler: str, type: str, message: str) -> None:
        super().__init__(f"handler {handler!r}: {type}: {message}")
        self.handler = handler
        self.type = type
        self.message = message


class CallerLink(Protocol):
    """What a call's context reaches its caller through (the engine's exchange)."""

    def call(self, name: str, args: Any, timeout: float | None) -> Any: ...

    async def acall(self, name: str, args: Any, timeout: float | None) -> Any: ...


# Held only to flip a CancelEvent's fields: one lock for all of them (a lock each would cost every call its making)
_CANCEL_LOCK = threading.Lock()


class CancelEvent(threading.Event):
    """A ``threading.Event`` that also runs callbacks, once, when it is set: how a cancellation raised on a
    gRPC thread reaches an asyncio task on the worker's event loop (the callback cancels the task). ``reason``
    is the status the call ends with once set: ``"CANCELLED"`` (its caller went) or ``"DEADLINE_EXCEEDED"``.

    Made for every call, and most are never cancelled nor waited on: its condition and callback list are made
    only when a tool first waits or a callback is added (a ``threading.Event`` makes a condition and two locks
    up front)."""

    def __init__(self) -> None:  # no super().__init__(): every method of Event is redefined here
        self.reason = ""
        self._flag = False
        self._cond: threading.Condition | None = None  # made by the first wait
        self._callbacks: list[Callable[[], object]] | None = None

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set  # threading.Event's old name

    def set(self, reason: str = "CANCELLED") -> None:
        with _CANCEL_LOCK:
            if self._flag:
                return
            self.reason = reason
            self._flag = True
            cond, callbacks, self._callbacks = self._cond, self._callbacks, None
        if cond is not None:
            with cond:
                cond.notify_all()
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.exception("a cancellation callback failed")

    def clear(self) -> None:
        with _CANCEL_LOCK:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        with _CANCEL_LOCK:
            if self._cond is None:
                self._cond = threading.Condition(threading.Lock())
            cond = self._cond
        with cond:  # set() notifies under this lock after raising the flag: no wake-up is lost
            if not self._flag:
                cond.wait(timeout)
            return self._flag

    def add_callback(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` when the event is set (at once if it already is); returns a function that removes it."""
        with _CANCEL_LOCK:
            if not self._flag:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], object]) -> None:
        with _CANCEL_LOCK:
            if self._callbacks is not None and callback in self._callbacks:
                self._callbacks.remove(callback)

    def _at_fork_reinit(self) -> None:
        self._cond = None


@dataclass(slots=True)
class Session:
    """Per-session state kept by the worker between calls of one session (models, caches, ...)."""

    session_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    last_used: float = 0.0


@dataclass(slots=True, eq=False)
class ToolContext:
    """The call a tool is serving. Declare a parameter annotated ``ToolContext`` (or named ``ctx``) to get it.

    - ``session_id`` / ``session``: the caller's session and its state dict (``session.state``); ``session`` is
      None for calls without a session.
    - ``metadata``: the request metadata.
    - ``call_id``: this call's id in the worker's log records (the caller's ``krait-call-id`` header, or made
      by the worker).
    - ``cancelled`` / ``check_cancelled()`` / ``sleep()`` / ``wait_cancelled()``: the cancellation flag. A
      generator only sees ``GeneratorExit`` at its next ``yield``; a tool blocked between yields polls this flag
      (or sleeps with :meth:`sleep`, which wakes at once on cancellation) to stop promptly.
    - ``async_sleep()`` / ``async_wait_cancelled()``: the same waits for ``async def`` tools, without blocking
      the event loop. An async tool's task is also cancelled (``asyncio.CancelledError`` at its current
      ``await``), so these return early only where that error does not reach, e.g. under ``asyncio.shield``.
    - ``span`` / ``trace_id``: the call's OpenTelemetry span and its trace id (see python_worker.tracing).
    - ``report_progress()``: on a streaming call, sends a progress chunk (metadata ``krait.event=progress``) in
      order with the tool's own chunks; on a unary call it keeps the last report in the response metadata.
    - ``call()`` / ``acall()``: ask the caller to run one of its handlers (an Elixir function, a Python
      callable given to the client) and return its value; :class:`HandlerError` when it cannot.
    """

    tool_name: str
    worker_id: str
    session_id: str = ""
    session: Session | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    call_id: str = ""
    cancel_event: CancelEvent = field(default_factory=CancelEvent)
    progress_sink: Callable[[dict[str, Any]], None] | None = None
    trace_id: str = ""
    _call_span: Any = None  # python_worker.tracing.CallSpan, when OpenTelemetry is installed
    _caller: CallerLink | None = None  # the engine's exchange with the caller, when the transport has one

    @property
    def span(self) -> Any:
        """The call's OpenTelemetry span (``krait.tool <name>``), to add events and attributes to; the tool runs
        with it current, so spans it starts are its children. ``INVALID_SPAN`` (which records nothing) when
        spans are off; None without OpenTelemetry."""
        from ..tracing import current_span

        return current_span(self)

    @property
    def cancelled(self) -> bool:
        """True once the caller cancelled, disconnected or its deadline passed."""
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`ToolCancelled` if the call has been cancelled."""
        if self.cancel_event.is_set():
            raise ToolCancelled(f"{self.tool_name} was cancelled")

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return False at once if the call is cancelled meanwhile (True otherwise)."""
        return not self.cancel_event.wait(seconds)

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until the call is cancelled (True) or ``timeout`` seconds pass (False)."""
        return self.cancel_event.wait(timeout)

    async def async_sleep(self, seconds: float) -> bool:
        """``await``-able :meth:`sleep`: False as soon as the call is cancelled, True after ``seconds``."""
        return not await self.async_wait_cancelled(seconds)

    async def async_wait_cancelled(self, timeout: float | None = None) -> bool:
        """``await``-able :meth:`wait_cancelled`: True once the call is cancelled, False after ``timeout``."""
        if self.cancel_event.is_set():
            return True
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        remove = self.cancel_event.add_callback(lambda: loop.call_soon_threadsafe(wake))
        try:
            done, _ = await asyncio.wait({woken}, timeout=timeout)
            return bool(done)
        finally:
            remove()
            woken.cancel()

    def report_progress(self, progress: float, total: float | None = None, message: str = "") -> None:
        """Report progress (``progress`` out of ``total``, or a fraction when ``total`` is None)."""
        if self.progress_sink is not None:
            event: dict[str, Any] = {"progress": progress, "total": total, "message": message}
            self.progress_sink(event)

    def call(self, name: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """Run the caller's handler ``name`` with ``args`` (a JSON value, usually a dict) and return its value.
        Blocks until the caller answers, ``timeout`` seconds pass (:class:`HandlerError` ``HandlerTimeout``),
        or the call is cancelled (:class:`ToolCancelled`). For ``async def`` tools use :meth:`acall`."""
        if self._caller is None:
            raise _unavailable(name)
        return self._caller.call(name, args, timeout)

    async def acall(self, name: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """``await``-able :meth:`call`, for ``async def`` tools (the event loop keeps running meanwhile)."""
        if self._caller is None:
            raise _unavailable(name)
        return await self._caller.acall(name, args, timeout)


def _unavailable(name: str) -> HandlerError:
    return HandlerError(
        name,
        "HandlersUnavailable",
        "this call came by a transport that carries no handler calls: call the tool with ExecuteToolDuplex,"
        " the local link (an Elixir pool), or a WebSocket",
    )
