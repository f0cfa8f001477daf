"""ToolContext: what a running tool may know about its call and do besides yielding."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ToolCancelled(Exception):
    """Raised by :meth:`ToolContext.check_cancelled` once the caller has gone or the deadline has passed."""


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
    - ``cancelled`` / ``check_cancelled()`` / ``sleep()``: the cancellation flag. A generator only sees
      ``GeneratorExit`` at its next ``yield``; a tool blocked between yields polls this flag (or sleeps with
      :meth:`sleep`, which wakes at once on cancellation) to stop promptly.
    - ``report_progress()``: on a streaming call, sends a progress chunk (metadata ``krait.event=progress``) in
      order with the tool's own chunks; on a unary call it keeps the last report in the response metadata.
    """

    tool_name: str
    worker_id: str
    session_id: str = ""
    session: Session | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    call_id: str = ""
    cancel_event: threading.Event = field(default_factory=threading.Event)
    progress_sink: Callable[[dict[str, Any]], None] | None = None

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

    def report_progress(self, progress: float, total: float | None = None, message: str = "") -> None:
        """Report progress (``progress`` out of ``total``, or a fraction when ``total`` is None)."""
        if self.progress_sink is not None:
            event: dict[str, Any] = {"progress": progress, "total": total, "message": message}
            self.progress_sink(event)
