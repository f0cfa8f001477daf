"""The local link: the pool's own workers served over their stdin/stdout (``docs/link.md``), a thin front over
the :class:`~python_worker.engine.Engine` like the gRPC servicer.

Threads follow the leader/follower pattern: one thread at a time reads the pipe; when it reads a tool call it
hands the reading over (releases the read lock, which wakes a follower) and serves the call itself, as the
tool's thread for a unary call or as the sender of a stream's batches. A call so starts on the thread that read
it, with no queue and no hand-off between threads on the way: the hand-off to an executor cost ~30 µs per call
(measured: a Port ping-pong through a thread pool took 37-48 µs p50 against 11-16 µs answered on the reading
thread, and 24 µs with leader/follower). Control frames (cancel, credit) and small requests (ping) are handled by
the reading thread at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from google.rpc import code_pb2, status_pb2

from ..engine import Engine, StreamHandle
from ..engine.deadlines import Deadline, Deadlines
from ..proto import pb
from ..wire import encode_batch
from .link_io import CANCEL, CREDIT, END, MESSAGE, OPEN, STARTED, FrameReader, FrameWriter

log = logging.getLogger("krait.worker")

_OK = status_pb2.Status(code=code_pb2.OK).SerializeToString()
_TOOL_METHODS = frozenset({"ExecuteTool", "ExecuteStreamingTool", "ExecuteStreamingToolBatched"})
# answered on the reading thread (session calls may run an adapter's on_session_end: they get a thread)
_INLINE_METHODS = frozenset({"Ping", "ListTools"})


def _status(code: int, message: str) -> bytes:
    data: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return data


class LinkCall:
    """One tool call on the link: its cancellation (by the pool or its deadline) and its credit.

    Its lock is shared by all calls: it is held only to flip a field, and a lock or condition of its own
    would cost every unary call ~4 µs to create (the credit's condition is made for streams only)."""

    _lock = threading.Lock()

    def __init__(self, call_id: int, credit: int) -> None:
        self.call_id = call_id
        self.credit = credit
        self.ended: bytes | None = None  # the END status once cancelled or past its deadline
        self.deadline: Deadline | None = None
        self.stream: StreamHandle | None = None
        self.cancel_event: threading.Event | None = None
        self._cond: threading.Condition | None = None

    def attach(self, cancel_event: threading.Event, stream: StreamHandle | None = None) -> None:
        """The call's tool is about to run: from now on a cancellation reaches it."""
        with self._lock:
            self.cancel_event, self.stream = cancel_event, stream
            if stream is not None:
                self._cond = threading.Condition(threading.Lock())
            ended = self.ended is not None
        if ended:
            self._stop()

    def cancel(self, code: int, message: str) -> None:
        with self._lock:
            if self.ended is not None:
                return
            self.ended = _status(code, message)
            cond = self._cond
        if cond is not None:
            with cond:
                cond.notify_all()
        self._stop()

    def _stop(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()
        if self.stream is not None:
            self.stream.cancel()

    def add_credit(self, n: int) -> None:
        with self._lock:
            cond = self._cond
            if cond is None:  # not a stream (yet): nobody waits for credit
                self.credit += n
                return
        with cond:
            self.credit += n
            cond.notify_all()

    def spend(self, n: int) -> bool:
        """Wait for credit, then spend ``n`` bytes of it (it may go negative: one message may overshoot).
        False when the call was cancelled meanwhile. Streams only (after :meth:`attach` with a stream)."""
        cond = self._cond
        assert cond is not None
        with cond:
            while self.credit <= 0 and self.ended is None:
                cond.wait()
            if self.ended is not None:
                return False
            self.credit -= n
            return True


class LinkServer:
    """Serves ``engine`` over one pipe until the pool closes it (then :attr:`closed` is set)."""

    def __init__(
        self,
        engine: Engine,
        reader: FrameReader,
        writer: FrameWriter,
        *,
        threads: int,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.engine = engine
        self.reader = reader
        self.writer = writer
        self.closed = threading.Event()
        self._threads = threads
        self._deadlines = deadlines or Deadlines()
        self._read_lock = threading.Lock()
        self._calls: dict[int, LinkCall] = {}
        self._calls_lock = threading.Lock()

    def start(self) -> None:
        for n in range(self._threads):
            threading.Thread(target=self._loop, name=f"link-{n}", daemon=True).start()

    def cancel_all(self, message: str) -> None:
        """The worker is stopping: every call's tool is told to stop."""
        with self._calls_lock:
            calls = list(self._calls.values())
        for call in calls:
            call.cancel(code_pb2.CANCELLED, message)

    # -- reading --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.closed.is_set():
            with self._read_lock:
                if self.closed.is_set():
                    return
                frame = self.reader.read()
                if frame is None:  # the pool has gone (see app.py)
                    self.closed.set()
                    return
                work = self._dispatch(frame)
            if work is not None:
                work()

    def _dispatch(self, frame: Any) -> Any:
        """Handle a frame on the reading thread; returns the work a tool call needs, to run after reading is
        handed over."""
        kind, call_id = frame.kind, frame.call_id
        if kind == OPEN:
            if frame.method in _TOOL_METHODS:
                call = LinkCall(call_id, frame.credit)
                with self._calls_lock:
                    self._calls[call_id] = call
                self.writer.send(call_id, STARTED)
                if frame.timeout_ms:
                    call.deadline = self._deadlines.after(
                        frame.timeout_ms / 1000, lambda: call.cancel(code_pb2.DEADLINE_EXCEEDED, "deadline exceeded")
                    )
                return lambda: self._serve_tool(call, frame)
            if frame.method in _INLINE_METHODS:
                self._serve_small(frame)  # quick, and never blocks: no hand-over of the reading
                return None
            return lambda: self._serve_small(frame)
        if kind in (CANCEL, CREDIT):
            with self._calls_lock:
                open_call = self._calls.get(call_id)
            if open_call is not None:
                if kind == CANCEL:
                    open_call.cancel(code_pb2.CANCELLED, "cancelled by the caller")
                else:
                    open_call.add_credit(frame.credit)
            return None
        log.warning("unexpected link frame kind %s (call %d): ignored", kind, call_id)
        return None

    # -- serving --------------------------------------------------------------------------------------------
    def _serve_small(self, frame: Any) -> None:
        try:
            response = self.engine.small_call(frame.method, frame.payload)
        except Exception as exc:
            self._end(frame.call_id, self.engine.status_bytes(exc, frame.method))
            return
        self.writer.send_parts([(frame.call_id, MESSAGE, response.SerializeToString()), (frame.call_id, END, _OK)])

    def _serve_tool(self, call: LinkCall, frame: Any) -> None:
        metadata = frame.metadata  # a protobuf map: read-only, as the engine needs it
        tool_name = ""
        try:
            request = self.engine.parse_request(frame.payload)
            tool_name = request.tool_name
            if frame.method == "ExecuteTool":
                response = self.engine.execute(request, metadata, on_ready=lambda ctx: call.attach(ctx.cancel_event))
                if call.ended is None:
                    self.writer.send_parts(
                        [(call.call_id, MESSAGE, response.SerializeToString()), (call.call_id, END, _OK)]
                    )
                    return
            else:
                self._stream(call, request, metadata, batched=frame.method == "ExecuteStreamingToolBatched")
                if call.ended is None:
                    self._end(call.call_id, _OK)
                    return
        except Exception as exc:
            if call.ended is None:
                self._end(call.call_id, self.engine.status_bytes(exc, frame.method, tool_name))
                return
        finally:
            if call.deadline is not None:
                call.deadline.cancel()
            with self._calls_lock:
                self._calls.pop(call.call_id, None)
        assert call.ended is not None
        self._end(call.call_id, call.ended)

    def _stream(self, call: LinkCall, request: Any, metadata: Mapping[str, str], *, batched: bool) -> None:
        handle = self.engine.stream(request, metadata, frame_large=batched)
        try:
            call.attach(handle.ctx.cancel_event, handle)
            handle.start()
            for batch in handle.batches(batched=batched):
                payload = encode_batch(batch) if batched else _single(batch)
                if not call.spend(len(payload)):
                    return
                self.writer.send(call.call_id, MESSAGE, payload)
        finally:
            handle.close()

    def _end(self, call_id: int, status: bytes) -> None:
        self.writer.send(call_id, END, status)


def _single(batch: list[Any]) -> bytes:
    seq, data, content_type, is_final, meta = batch[0]
    return pb.ToolChunk(
        seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta
    ).SerializeToString()
