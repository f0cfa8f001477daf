"""The local link: the pool's own workers served over their stdin/stdout (``docs/link.md``), a thin front over
the :class:`~python_worker.engine.Engine` like the gRPC servicer.

Threads follow the leader/follower pattern: one thread at a time reads the pipe (it holds the read lock); when it
reads a tool call it hands the reading over (releases the read lock, which wakes a follower) and serves the call
itself, as the tool's thread for a unary call or as the sender of a stream's batches. A call so starts on the
thread that read it, with no queue and no hand-off between threads on the way: the hand-off to an executor cost
~30 µs per call (measured: a Port ping-pong through a thread pool took 37-48 µs p50 against 11-16 µs answered on
the reading thread, and 24 µs with leader/follower). Control frames (cancel, credit) and small requests (ping)
are handled by the reading thread at once, without letting go of the reading.

A unary call on an otherwise idle worker (the pool's usual case: one call per worker) is served *inline*: the
reading thread runs it without handing the reading over, and reads on once it is answered. Handing over wakes a
follower, which then takes the GIL from the tool; on this 2-core VM that doubled the worker's CPU time per call.
A tool that is not quick must not keep the link unread (cancels, credit for other calls, health pings), so a
watchdog thread hands the reading over on the inline call's behalf once it has run for a tick or two
(:data:`INLINE_TICK_S`), and the tool is then handed over at once on its next calls. The watchdog ticks only
while inline calls come, and sleeps once they stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from ..engine import Engine, StreamHandle
from ..engine.deadlines import Deadline, Deadlines
from ..engine.exchange import Exchange
from ..errors import CallError, InvalidArguments
from ..proto import pb
from ..sdk.context import CancelEvent
from ..wire import encode_batch, link_segments
from .link_io import (
    CANCEL,
    CREDIT,
    END,
    HANDLER_CALL,
    HANDLER_REPLY,
    INPUT,
    INPUT_END,
    MESSAGE,
    OPEN,
    FrameReader,
    FrameWriter,
    InputFrame,
    credit_frame,
    send_segments,
)

log = logging.getLogger("krait.worker")

_OK = status_pb2.Status(code=code_pb2.OK).SerializeToString()
_TOOL_METHODS = frozenset({"ExecuteTool", "ExecuteStreamingTool", "ExecuteStreamingToolBatched"})
# answered on the reading thread (session calls may run an adapter's on_session_end: they get a thread)
_INLINE_METHODS = frozenset({"Ping", "ListTools"})
# How often the watchdog looks at an inline call: one still running after a whole tick (1-2 ticks after it
# started) gets the reading handed over. A tick wakes a thread, 1/INLINE_TICK_S times a second while inline
# calls come; none once they have stopped for INLINE_IDLE_TICKS ticks. Not shorter: on a loaded 2-core machine
# a quick call is sometimes preempted for a few ms, and a 2 ms tick marked quick tools slow.
INLINE_TICK_S = 0.005
INLINE_IDLE_TICKS = 250
# A tool handed over by the watchdog is handed over at once for this long (a slow tool then runs inline once in
# a while), or until one of its calls so handed over ends within a tick: a quick one that was slow once (behind a
# garbage collection, or preempted on a busy machine) is served inline again from its next call.
SLOW_TOOL_S = 5.0
# An inline call's deadline at least this far away is not pushed on the deadlines' heap when the call opens:
# the watchdog pushes it (at its exact time) once it sees the call still running a tick later. Most calls end
# within a tick, and a push (a lock, a heap entry, a Deadline and its callback) was ~7% of a quick call's CPU.
# Shorter deadlines are pushed at once: a watchdog tick delayed on a loaded machine must not make them late.
WATCHED_DEADLINE_S = 1.0


def _cancel_reason(payload: bytes) -> tuple[int, str]:
    """The code and message a CANCEL frame ends its call with: its payload, when there is one, is a
    ``google.rpc.Status`` saying why (DEADLINE_EXCEEDED: the caller's deadline passed)."""
    if payload:
        try:
            if status_pb2.Status.FromString(payload).code == code_pb2.DEADLINE_EXCEEDED:
                return code_pb2.DEADLINE_EXCEEDED, "deadline exceeded"
        except DecodeError:
            log.warning("a CANCEL frame with a malformed status: taken as a plain cancel")
    return code_pb2.CANCELLED, "cancelled by the caller"


def _status(code: int, message: str) -> bytes:
    data: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return data


# OPEN metadata a pool sends when its caller streams input into the call (docs/link.md)
INPUT_HEADER = "krait-input"
# OPEN metadata a pool sends when it reads a batched stream's plain JSON chunks as JSON_CHUNKS frames
JSON_CHUNKS_HEADER = "krait-json-chunks"


class LinkPeer:
    """How a call's tool reaches its caller over the link: CREDIT and HANDLER_CALL frames."""

    __slots__ = ("_call_id", "_writer")

    def __init__(self, writer: FrameWriter, call_id: int) -> None:
        self._writer, self._call_id = writer, call_id

    def grant(self, items: int, nbytes: int) -> None:
        self._writer.send_raw(credit_frame(self._call_id, items, nbytes))

    def handler_call(self, call: Any) -> None:
        self._writer.send(self._call_id, HANDLER_CALL, call.SerializeToString())


class LinkCall:
    """One tool call on the link: its cancellation (by the pool or its deadline) and its credit.

    Its lock is shared by all calls: it is held only to flip a field, and a lock or condition of its own
    would cost every unary call ~4 µs to create (the credit's condition is made for streams only)."""

    __slots__ = (
        "_cond",
        "_reason",
        "call_id",
        "cancel_event",
        "credit",
        "deadline",
        "due",
        "ended",
        "exchange",
        "handed",
        "open_frame",
        "stream",
    )

    _lock = threading.Lock()

    def __init__(self, call_id: int, credit: int) -> None:
        self.call_id = call_id
        self.credit = credit
        self.ended: bytes | None = None  # the END status once cancelled or past its deadline
        self.deadline: Deadline | None = None
        self.due = 0.0  # an inline call's deadline (monotonic) the watchdog is yet to push; 0: none
        self.handed = False  # an inline call whose reading was handed over (under the link's inline lock)
        self.stream: StreamHandle | None = None
        self.cancel_event: CancelEvent | None = None
        self._cond: threading.Condition | None = None
        self.open_frame: Any = None  # the OPEN frame of a call served inline
        self._reason = "CANCELLED"  # the status its tool's cancellation ends it with
        self.exchange: Exchange | None = None  # input and handler calls, fed by the reading thread

    def attach(self, cancel_event: CancelEvent, stream: StreamHandle | None = None) -> None:
        """The call's tool is about to run: from now on a cancellation reaches it."""
        with self._lock:
            self.cancel_event, self.stream = cancel_event, stream
            if stream is not None:
                self._cond = threading.Condition(threading.Lock())
            ended = self.ended is not None
        if ended:
            self._stop()

    def cancel(self, code: int, message: str) -> None:
        self.end_with(_status(code, message), code)

    def end_with(self, status: bytes, code: int) -> None:
        """End the call with ``status`` (a serialized ``google.rpc.Status``) and stop its tool."""
        with self._lock:
            if self.ended is not None:
                return
            self.ended = status
            self._reason = "DEADLINE_EXCEEDED" if code == code_pb2.DEADLINE_EXCEEDED else "CANCELLED"
            cond = self._cond
        if cond is not None:
            with cond:
                cond.notify_all()
        self._stop()

    def _stop(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set(self._reason)
        if self.stream is not None:
            self.stream.cancel(self._reason)

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
        # the inline call (see the module doc): its number, whether it runs, whether its reading was handed over
        self._inline_lock = threading.Lock()  # taken as is on the hot path (a Condition's with is Python code)
        self._inline_cond = threading.Condition(self._inline_lock)
        self._inline_seq = 0
        self._inline_running = False
        self._inline_tool = ""
        self._inline_call: LinkCall | None = None
        self._watching = False  # the watchdog ticks (else it waits for the next inline call)
        # tools an inline call of which had to be handed over, until when they are handed over at once
        self._slow_tools: dict[str, float] = {}

    def start(self) -> None:
        for n in range(self._threads):
            threading.Thread(target=self._loop, name=f"link-{n}", daemon=True).start()
        threading.Thread(target=self._watch, name="link-watchdog", daemon=True).start()

    def cancel_all(self, message: str) -> None:
        """The worker is stopping: every call's tool is told to stop."""
        with self._calls_lock:
            calls = list(self._calls.values())
        for call in calls:
            call.cancel(code_pb2.CANCELLED, message)

    # -- reading --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.closed.is_set():
            self._read_lock.acquire()
            if not self._lead():
                return

    def _lead(self) -> bool:
        """Read frames while this thread holds the read lock, until a call takes the thread: then the reading
        has been handed over. False once the link has closed."""
        while True:
            if self.closed.is_set():
                self._read_lock.release()
                return False
            frame = self.reader.read()
            if frame is None:  # the pool has gone (see app.py)
                self.closed.set()
                self._read_lock.release()
                return False
            work = self._dispatch(frame)
            if work is None:
                continue
            if isinstance(work, LinkCall):
                if self._serve_inline(work):
                    continue  # answered, and the reading was never handed over
                return True
            self._read_lock.release()
            work()
            return True

    def _serve_inline(self, call: LinkCall) -> bool:
        """Serve a unary call on the reading thread; True when the reading is still this thread's afterwards,
        False when it was handed over meanwhile (by the watchdog, or at once for a tool known to be slow)."""
        with self._inline_lock:
            self._inline_seq += 1
            self._inline_running = True
            self._inline_call = call
            if not self._watching:
                self._watching = True
                self._inline_cond.notify()
        try:
            self._serve_tool(call, call.open_frame, inline=True)
        finally:
            with self._inline_lock:
                # Once this call's reading was handed over, the new reader may already serve the next call
                # inline (its OPEN can arrive as soon as this call's reply is written): that state is its own.
                if self._inline_call is call:
                    self._inline_running = False
                    self._inline_call = None
                handed = call.handed
                deadline = call.deadline  # read with the watchdog (which may push it) shut out
            if deadline is not None:
                deadline.cancel()
        return not handed

    def _hand_over_inline(self) -> None:
        """Let a follower read while the inline call runs on (the read lock is released on its reader's behalf).
        With the inline lock held."""
        call = self._inline_call
        if self._inline_running and call is not None and not call.handed:
            call.handed = True
            self._read_lock.release()

    def _hand_over_waiting(self, call: LinkCall) -> None:
        """Before ``call`` waits for a frame (a handler's reply): hand its reading over if it still holds it. Only
        its own: a call already handed over must not release the reading of the call served inline after it."""
        with self._inline_cond:
            if self._inline_call is call:
                self._hand_over_inline()

    def _quick_again(self, tool: str) -> None:
        """A call of a tool marked slow ended within a tick: it was slow once (preempted on a loaded machine, or
        behind a garbage collection), not slow. Its next calls are served inline again: handing each over would
        cost every one of them a follower's wake-up (a worker's CPU per call doubled)."""
        with self._inline_lock:
            self._slow_tools.pop(tool, None)

    def _is_slow(self, tool: str) -> bool:
        until = self._slow_tools.get(tool)
        return until is not None and time.monotonic() < until

    def _watch(self) -> None:
        seen, quiet = -1, 0
        while True:
            with self._inline_cond:
                while not self._watching:
                    self._inline_cond.wait()
            time.sleep(INLINE_TICK_S)
            with self._inline_cond:
                call = self._inline_call
                if call is not None and call.due:  # still running: its deadline now goes on the heap
                    call.deadline = self._deadline_at(call, call.due)
                    call.due = 0.0
                if self._inline_running and self._inline_seq == seen:  # the same call as a tick ago: not quick
                    self._slow_tools[self._inline_tool] = time.monotonic() + SLOW_TOOL_S
                    self._hand_over_inline()
                quiet = quiet + 1 if self._inline_seq == seen else 0
                seen = self._inline_seq
                if quiet >= INLINE_IDLE_TICKS:
                    self._watching = False

    def _dispatch(self, frame: Any) -> Any:
        """Handle a frame on the reading thread; returns the work a tool call needs, to run after reading is
        handed over."""
        kind, call_id = frame.kind, frame.call_id
        if kind == OPEN:
            if frame.method in _TOOL_METHODS:
                call = LinkCall(call_id, frame.credit)
                call.exchange = Exchange(LinkPeer(self.writer, call_id), input_declared=INPUT_HEADER in frame.metadata)
                with self._calls_lock:
                    self._calls[call_id] = call
                self.writer.send_started(call_id)
                inline = frame.method == "ExecuteTool" and len(self._calls) == 1
                if frame.timeout_ms:
                    seconds = frame.timeout_ms / 1000
                    if inline and seconds >= WATCHED_DEADLINE_S:
                        call.due = time.monotonic() + seconds  # pushed by the watchdog if the call lasts
                    else:
                        call.deadline = self._deadline_at(call, time.monotonic() + seconds)
                if inline:
                    call.open_frame = frame
                    return call  # served inline
                return lambda: self._serve_tool(call, frame)
            if frame.method in _INLINE_METHODS:
                self._serve_small(frame)  # quick, and never blocks: no hand-over of the reading
                return None
            return lambda: self._serve_small(frame)
        if kind in (CANCEL, CREDIT, INPUT, INPUT_END, HANDLER_REPLY):
            with self._calls_lock:
                open_call = self._calls.get(call_id)
            if open_call is None:  # crossed the call's end
                return None
            if kind == CANCEL:
                open_call.cancel(*_cancel_reason(frame.payload))
            elif kind == CREDIT:
                open_call.add_credit(frame.credit)
            else:
                self._exchange_frame(open_call, kind, frame)
            return None
        log.warning("unexpected link frame kind %s (call %d): ignored", kind, call_id)
        return None

    def _deadline_at(self, call: LinkCall, when: float) -> Deadline:
        return self._deadlines.at(when, lambda: call.cancel(code_pb2.DEADLINE_EXCEEDED, "deadline exceeded"))

    def _exchange_frame(self, call: LinkCall, kind: int, frame: Any) -> None:
        """Input and handler replies from the caller, handed to the call's exchange; input the call does not
        take (or that does not parse) ends the call with INVALID_ARGUMENT."""
        exchange = call.exchange
        assert exchange is not None
        payload = frame.payload
        try:
            if isinstance(frame, InputFrame):  # a large one, parsed by hand (link_io.InputFrame)
                exchange.feed(frame.items)
            elif kind == INPUT:
                exchange.feed(pb.InputBatch.FromString(payload).items)
            elif kind == INPUT_END:
                end = pb.InputEnd.FromString(payload) if payload else None
                exchange.end_input(end.code, end.message) if end is not None else exchange.end_input()
            else:
                exchange.reply(pb.HandlerReply.FromString(payload))
        except DecodeError:
            what = "InputBatch" if kind == INPUT else "InputEnd" if kind == INPUT_END else "HandlerReply"
            error: Exception = InvalidArguments(f"an undecodable {what} frame")
            call.end_with(self.engine.status_bytes(error, "link"), code_pb2.INVALID_ARGUMENT)
        except CallError as exc:
            call.end_with(self.engine.status_bytes(exc, "link"), exc.code.value[0])

    # -- serving --------------------------------------------------------------------------------------------
    def _serve_small(self, frame: Any) -> None:
        try:
            response = self.engine.small_call(frame.method, frame.payload)
        except Exception as exc:
            self._end(frame.call_id, self.engine.status_bytes(exc, frame.method))
            return
        self.writer.send_parts([(frame.call_id, MESSAGE, response.SerializeToString()), (frame.call_id, END, _OK)])

    def _serve_tool(self, call: LinkCall, frame: Any, *, inline: bool = False) -> None:
        metadata = frame.metadata  # a protobuf map: read-only, as the engine needs it
        tool_name = ""
        try:
            request = self.engine.parse_request(frame.payload)
            tool_name = request.tool_name
            slow_since = 0.0  # when a call of a tool marked slow started (handed over at once)
            if inline:
                spec = self.engine.specs.get(tool_name)
                with self._inline_lock:
                    self._inline_tool = tool_name
                    if self._is_slow(tool_name):
                        slow_since = time.monotonic()
                        self._hand_over_inline()
                    elif spec is not None and spec.input is not None:
                        # a tool that reads input waits for frames this thread would read: hand the reading over
                        self._hand_over_inline()
                assert call.exchange is not None
                call.exchange.before_wait = partial(self._hand_over_waiting, call)  # a handler call waits likewise
            if frame.method == "ExecuteTool":
                response = self.engine.execute(
                    request, metadata, on_ready=lambda ctx: call.attach(ctx.cancel_event), exchange=call.exchange
                )
                if slow_since and time.monotonic() - slow_since < INLINE_TICK_S:
                    self._quick_again(tool_name)
                if call.ended is None:
                    self.writer.send_reply(call.call_id, response.SerializeToString())  # END: _OK, empty
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
            if call.deadline is not None and not inline:  # an inline call's: by _serve_inline
                call.deadline.cancel()
            with self._calls_lock:
                self._calls.pop(call.call_id, None)
        assert call.ended is not None
        self._end(call.call_id, call.ended)

    def _stream(self, call: LinkCall, request: Any, metadata: Mapping[str, str], *, batched: bool) -> None:
        json_chunks = batched and metadata.get(JSON_CHUNKS_HEADER) == "1"
        # for JSON_CHUNKS frames chunks are queued as tuples: a small chunk's data is joined into the array as
        # it is (no batch entry framed per chunk), a large one is written from its own buffer (send_segments)
        handle = self.engine.stream(request, metadata, frame_large=batched and not json_chunks, exchange=call.exchange)
        try:
            call.attach(handle.ctx.cancel_event, handle)
            handle.start()
            if json_chunks:
                self._send_segments(call, handle)
                return
            for batch in handle.batches(batched=batched):
                payload = encode_batch(batch) if batched else _single(batch)
                if not call.spend(len(payload)):
                    return
                self.writer.send(call.call_id, MESSAGE, payload)
        finally:
            handle.close()

    def _send_segments(self, call: LinkCall, handle: StreamHandle) -> None:
        """A batched stream to a pool that reads JSON_CHUNKS frames: each batch as its frames (runs of plain
        JSON chunks as one array each, the rest as ToolChunkBatch messages), in one write; the credit spent is
        their payloads' bytes, as for MESSAGE frames."""
        for batch in handle.batches():
            segments = link_segments(batch)
            size = 0
            for _, parts in segments:
                size += sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
            if not call.spend(size):
                return
            send_segments(self.writer, call.call_id, segments)

    def _end(self, call_id: int, status: bytes) -> None:
        self.writer.send(call_id, END, status)


def _single(batch: list[Any]) -> bytes:
    seq, data, content_type, is_final, meta = batch[0]
    return pb.ToolChunk(
        seq=seq, data=data, content_type=content_type, is_final=is_final, metadata=meta
    ).SerializeToString()
