"""The caller's side of a call beyond its arguments and chunks: the tool's input stream and its handler calls.

A transport creates one :class:`Exchange` per tool call, with a :class:`Peer` that reaches the caller (the link's
frames, the duplex RPC's messages, the WebSocket's events), feeds it what the caller sends (input items, the
input's end, handler replies), and hands it to the engine, which binds it to the tool.

Input is pulled, never pushed: the worker grants the caller credit (:data:`WINDOW_ITEMS` items and
:data:`WINDOW_BYTES` bytes) when the call starts, and grants again, in quarters of the window, as the tool reads.
A caller sends only within its credit, so memory stays bounded by one window per call and an endless input is
produced only as fast as the tool reads it. Items are decoded and validated when the tool takes them, on the
tool's own thread (or its event loop), so the thread that reads the transport only queues bytes.

``queue.Queue`` cannot wake an asyncio waiter, hand back credit per byte, or stop on the call's cancellation;
that is why the small FIFO here is written by hand.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol

import pydantic

from .. import codec
from ..errors import InvalidArguments
from ..proto import pb
from ..sdk.context import HandlerError, InputError, ToolCancelled, ToolContext
from ..sdk.tool import InputSpec

# What a caller may send ahead of the tool: enough to keep a fast producer and the tool busy at once (credit goes
# back in quarters, so a quarter window is always on its way), and what bounds a call's input in memory. 16 MiB:
# with 4 MiB (one 4 MiB frame in flight) large items moved stop-and-wait, 485 MiB/s against 981 at 16 MiB
# (measured: 64 float32 frames of 4 MiB into array_input over the link, worker CPU ~half the wall time either way).
WINDOW_ITEMS = 1024
WINDOW_BYTES = 16 << 20

_NOTHING: Any = object()  # no item yet
# The most items a tool's iterator takes from the queue at once (then hands them over one by one): one lock and
# one decoder call per batch instead of per item.
TAKE_MAX = WINDOW_ITEMS // 4
# A tool's reads are counted in its iterator and told to the exchange (which grants credit in quarters of the
# window) every this many items, and whenever it wants more than it was given.
_TELL_EVERY = 64
_NO_ITEMS: deque[tuple[bytes, str]] = deque(maxlen=0)  # until the call reads input (never appended to)


class Peer(Protocol):
    """How a call reaches its caller (thread-safe: called from tool threads and the worker's event loop)."""

    def grant(self, items: int, nbytes: int) -> None:
        """Send input credit: the caller may send ``items`` more items and ``nbytes`` more bytes."""

    def handler_call(self, call: Any) -> None:
        """Send a ``krait.v1.HandlerCall`` to the caller."""


class _Pending:
    """A handler call waiting for its reply (on a thread, or on the event loop)."""

    __slots__ = ("event", "future", "loop", "reply")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.reply: Any = None
        self.event = threading.Event()
        self.loop = loop
        self.future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None

    def wake(self) -> None:
        self.event.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Exchange:
    """One call's input stream and handler calls. ``input_declared``: True when the caller says it streams input
    (a tool that reads none is refused), None when it may (the duplex RPC), False when it cannot (a tool that
    reads input is refused unless its input comes as a JSON array in the arguments)."""

    __slots__ = (
        "_closed",
        "_cond",
        "_credit",
        "_ctx",
        "_ended",
        "_ids",
        "_index",
        "_input",
        "_items",
        "_pending",
        "_taken",
        "_tool",
        "_waiter",
        "_watching",
        "before_wait",
        "failure",
        "input_declared",
        "peer",
    )

    # Created for every tool call, also the many that never stream input nor call a handler: what costs more than
    # a field (a condition, a deque, a cancellation callback) is made only when the call needs it. All exchanges
    # share one lock, held only to move an item or a pending call.
    _lock = threading.Lock()

    def __init__(self, peer: Peer | None, *, input_declared: bool | None) -> None:
        self.peer = peer
        self.input_declared = input_declared
        self.failure: BaseException | None = None  # an invalid item: the call ends with it
        self.before_wait: Callable[[], None] | None = None  # called (once) before the tool first blocks on us
        self._cond: threading.Condition | None = None  # made when the tool reads input
        self._items: deque[tuple[bytes, str]] = _NO_ITEMS
        self._ended: tuple[int, str] | None = None
        self._closed = False
        self._input: InputSpec | None = None
        self._tool = ""
        self._ctx: ToolContext | None = None
        self._credit = [0, 0]  # items and bytes the caller may still send
        self._taken = [0, 0]  # items and bytes read since the last grant
        self._index = 0  # the next item's index in the whole input
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._ids = 0
        self._pending: dict[int, _Pending] | None = None
        self._watching = False  # the call's cancellation wakes our waiters

    # -- the engine's side ----------------------------------------------------------------------------------
    def bind(self, tool: str, spec: InputSpec | None, ctx: ToolContext) -> None:
        """The call was accepted: its tool reads ``spec``'s input (None: no input from here) and may call
        handlers. Grants the first credit."""
        if spec is not None:
            self._open_input()
        with self._lock:
            self._tool, self._input, self._ctx = tool, spec, ctx
            if spec is not None:
                self._credit = [WINDOW_ITEMS, WINDOW_BYTES]
        ctx._caller = self
        if spec is not None and self.peer is not None:
            self.peer.grant(WINDOW_ITEMS, WINDOW_BYTES)

    def _open_input(self) -> None:
        self._cond = threading.Condition(self._lock)
        self._items = deque()

    def _watch(self) -> None:
        """Before a first wait: the call's cancellation (or deadline) wakes every waiter."""
        if not self._watching and self._ctx is not None:
            self._watching = True
            self._ctx.cancel_event.add_callback(self._wake_all)

    def iterator(self, is_async: bool) -> Iterator[Any] | AsyncIterator[Any]:
        """The tool's input parameter."""
        return _AsyncInput(self) if is_async else _Input(self)

    def close(self) -> None:
        """The call is over: nothing more is queued, no grant is sent, waiters wake."""
        if self._cond is None and self._pending is None and self._waiter is None:
            self._closed = True  # the usual call: it read no input and called no handler, nobody waits
            return
        with self._lock:
            self._closed = True
            self._items.clear()
        self._wake_all()

    # -- the transport's side -------------------------------------------------------------------------------
    def feed(self, items: Sequence[Any]) -> None:
        """Queue items (objects with ``data`` and ``content_type``) the caller sent. Raises
        :class:`InvalidArguments` for input the call does not take (the transport ends the call with it)."""
        with self._lock:
            if self._closed:
                return  # crossed the call's end
            if not self._tool:
                raise InvalidArguments("input before any credit was granted: wait for the worker's credit")
            if self._input is None:
                raise InvalidArguments(f"{self._tool} reads no input stream")
            if self._ended is not None and items:
                raise InvalidArguments(f"{self._tool}: input after its end")
            credit = self._credit
            for item in items:
                data = item.data
                if credit[0] <= 0 or credit[1] <= 0:
                    raise InvalidArguments(
                        f"{self._tool}: input beyond the credit granted (item {self._index + len(self._items)});"
                        " send items only within the worker's credit"
                    )
                credit[0] -= 1
                credit[1] -= len(data)
                self._items.append((data, item.content_type))
            assert self._cond is not None
            self._cond.notify()
        self._wake_async()

    def end_input(self, code: int = 0, message: str = "") -> None:
        """The caller's input ended (``code`` 0) or failed (the tool's iterator raises :class:`InputError`)."""
        with self._lock:
            if self._ended is None:
                self._ended = (code, message)
            if self._cond is not None:
                self._cond.notify()
        self._wake_async()

    def reply(self, reply: Any) -> None:
        """A ``krait.v1.HandlerReply``; a reply to no waiting call (it timed out meanwhile) is dropped."""
        with self._lock:
            pending = self._pending.pop(reply.id, None) if self._pending else None
        if pending is not None:
            pending.reply = reply
            pending.wake()

    # -- reading input --------------------------------------------------------------------------------------
    def _take(self) -> list[tuple[bytes, str]] | None:
        """The raw items queued now, at least one (None at the input's end), waiting on this thread."""
        self._announce_wait()
        self._watch()
        cond = self._cond
        assert cond is not None
        with cond:
            while (items := self._next_locked()) is _NOTHING:
                cond.wait()
        return items  # type: ignore[no-any-return]

    async def _atake(self) -> list[tuple[bytes, str]] | None:
        """:meth:`_take` for async tools: waits on the event loop."""
        loop = asyncio.get_running_loop()
        self._watch()
        while True:
            with self._lock:
                items = self._next_locked()
                if items is _NOTHING:
                    future: asyncio.Future[None] = loop.create_future()
                    self._waiter = (loop, future)
            if items is not _NOTHING:
                return items  # type: ignore[no-any-return]
            try:
                await future
            finally:
                with self._lock:
                    if self._waiter is not None and self._waiter[1] is future:
                        self._waiter = None

    def _next_locked(self) -> Any:
        if (self._ctx is not None and self._ctx.cancel_event.is_set()) or self._closed:
            raise ToolCancelled(f"{self._tool} was cancelled")
        queued = self._items
        if queued:
            if len(queued) <= TAKE_MAX:
                items = list(queued)
                queued.clear()
                return items
            return [queued.popleft() for _ in range(TAKE_MAX)]
        if self._ended is not None:
            code, message = self._ended
            if code:
                raise InputError(message or "the caller's input failed")
            return None
        return _NOTHING

    def _consumed(self, items: int, nbytes: int) -> None:
        """The tool has read ``items`` items of ``nbytes`` bytes: credit for them goes back to the caller once a
        quarter of the window has been read (so the caller never gets ahead of the tool by more than a window)."""
        grant = None
        with self._lock:
            taken = self._taken
            taken[0] += items
            taken[1] += nbytes
            if taken[0] >= WINDOW_ITEMS // 4 or taken[1] >= WINDOW_BYTES // 4:
                grant = (taken[0], taken[1])
                self._credit[0] += grant[0]
                self._credit[1] += grant[1]
                self._taken = [0, 0]
            closed = self._closed
        if grant is not None and not closed and self.peer is not None:
            self.peer.grant(*grant)

    def decode(self, raws: list[tuple[bytes, str]]) -> tuple[list[Any], InvalidArguments | None]:
        """Items as the tool's annotation wants them, in one call to the decoder when they are JSON; an invalid
        item ends the list, and comes back as the error to raise once the items before it were read (the call then
        ends with it, even if the tool catches it)."""
        spec = self._input
        assert spec is not None
        first = self._index
        self._index += len(raws)
        try:
            return _decode_all(spec, raws), None
        except (ValueError, pydantic.ValidationError):
            pass  # one item is bad: which one, item by item (the rare path)
        values: list[Any] = []
        for offset, (data, content_type) in enumerate(raws):
            try:
                values.append(_decode(spec, data, content_type))
            except (ValueError, pydantic.ValidationError) as exc:
                return values, InvalidArguments(f"{self._tool}: input item {first + offset}: {_problem(exc)}")
        return values, None

    def _announce_wait(self) -> None:
        hook, self.before_wait = self.before_wait, None
        if hook is not None:
            hook()

    def _wake_all(self) -> None:
        """The call was cancelled or is over: every wait ends (the waiters see why)."""
        with self._lock:
            if self._cond is not None:
                self._cond.notify_all()
            pending = list(self._pending.values()) if self._pending else []
            self._pending = None
        self._wake_async()
        for waiting in pending:
            waiting.wake()

    def _wake_async(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            waiter[0].call_soon_threadsafe(_resolve, waiter[1])

    # -- handler calls --------------------------------------------------------------------------------------
    def _send_call(self, name: str, args: Any, timeout: float | None, pending: _Pending) -> int:
        if self.peer is None:
            raise HandlerError(name, "HandlersUnavailable", "this call's transport carries no handler calls")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        args_json = codec.encode_json({} if args is None else args).decode()
        self._watch()
        with self._lock:
            if self._closed or (self._ctx is not None and self._ctx.cancel_event.is_set()):
                raise ToolCancelled(f"{self._tool} was cancelled")
            self._ids += 1
            call_id = self._ids
            if self._pending is None:
                self._pending = {}
            self._pending[call_id] = pending
        timeout_ms = 0 if timeout is None else max(1, round(timeout * 1000))
        self.peer.handler_call(pb.HandlerCall(id=call_id, name=name, args_json=args_json, timeout_ms=timeout_ms))
        return call_id

    def call(self, name: str, args: Any, timeout: float | None) -> Any:
        """``ctx.call``: run the caller's handler and wait for its value on this thread."""
        pending = _Pending()
        call_id = self._send_call(name, args, timeout, pending)
        self._announce_wait()
        answered = pending.event.wait(timeout)
        return self._outcome(name, call_id, pending, answered, timeout)

    async def acall(self, name: str, args: Any, timeout: float | None) -> Any:
        """``ctx.acall``: the same, awaited on the event loop."""
        pending = _Pending(asyncio.get_running_loop())
        call_id = self._send_call(name, args, timeout, pending)
        assert pending.future is not None
        try:
            await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            answered = True
        except TimeoutError:
            answered = False
        return self._outcome(name, call_id, pending, answered, timeout)

    def _outcome(self, name: str, call_id: int, pending: _Pending, answered: bool, timeout: float | None) -> Any:
        reply = pending.reply
        if reply is None:
            with self._lock:
                if self._pending:
                    self._pending.pop(call_id, None)
            if not answered:
                raise HandlerError(name, "HandlerTimeout", f"no answer within {timeout} s")
            raise ToolCancelled(f"{self._tool} was cancelled while waiting for handler {name!r}")
        if reply.HasField("error"):
            raise HandlerError(name, reply.error.type or "HandlerFailed", reply.error.message)
        try:
            return codec.decode_value(reply.data, reply.content_type or codec.JSON)
        except ValueError as exc:
            raise HandlerError(name, "HandlerFailed", f"its value could not be decoded: {exc}") from None


class _Reader:
    """What the two input iterators share: the items decoded but not read yet, and their sizes."""

    __slots__ = ("_error", "_exchange", "_read", "_ready")

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._ready: deque[tuple[Any, int]] = deque()
        self._error: InvalidArguments | None = None
        self._read = [0, 0]  # items and bytes read since the exchange was last told (no lock per item)

    def _tell(self) -> None:
        """Everything handed out so far has been read and the tool wants more: the exchange is told before the
        tool waits (the caller may be waiting for that credit)."""
        read = self._read
        if read[0]:
            self._exchange._consumed(read[0], read[1])
            self._read = [0, 0]

    def _fill(self, raws: list[tuple[bytes, str]]) -> None:
        values, self._error = self._exchange.decode(raws)
        self._ready.extend(zip(values, (len(data) for data, _ in raws), strict=False))

    def _next_ready(self) -> Any:
        value, nbytes = self._ready.popleft()
        read = self._read
        read[0] += 1
        read[1] += nbytes
        if read[0] >= _TELL_EVERY:
            self._exchange._consumed(read[0], read[1])
            self._read = [0, 0]
        return value

    def _raise_error(self) -> None:
        error = self._error
        if error is not None:
            exchange = self._exchange
            exchange.failure = exchange.failure or error
            raise error


class _Input(_Reader):
    """A sync tool's input parameter: blocks for the next item, ends with the caller's input."""

    __slots__ = ()

    def __iter__(self) -> _Input:
        return self

    def __next__(self) -> Any:
        if not self._ready:
            self._raise_error()
            self._tell()
            raws = self._exchange._take()
            if raws is None:
                raise StopIteration
            self._fill(raws)
            if not self._ready:
                self._raise_error()
        return self._next_ready()


class _AsyncInput(_Reader):
    """An async tool's input parameter: awaits the next item without blocking the event loop."""

    __slots__ = ()

    def __aiter__(self) -> _AsyncInput:
        return self

    async def __anext__(self) -> Any:
        if not self._ready:
            self._raise_error()
            self._tell()
            raws = await self._exchange._atake()
            if raws is None:
                raise StopAsyncIteration
            self._fill(raws)
            if not self._ready:
                self._raise_error()
        return self._next_ready()


def _decode_all(spec: InputSpec, raws: list[tuple[bytes, str]]) -> list[Any]:
    """Every item at once: JSON items joined into one array for one pass of the parser (and of pydantic, against
    ``list[T]``); binary items one by one (each is its own payload)."""
    if spec.kind == "json" and all(content_type in ("", codec.JSON) for _, content_type in raws):
        array = b"[" + b",".join(data for data, _ in raws) + b"]"
        if spec.list_adapter is None:
            values = codec.decode_json(array)
            if not isinstance(values, list) or len(values) != len(raws):  # an item that was not one JSON value
                raise ValueError("not one JSON value per item")
            return values
        return spec.list_adapter.validate_json(array)  # type: ignore[no-any-return]
    return [_decode(spec, data, content_type) for data, content_type in raws]


def _decode(spec: InputSpec, data: bytes, content_type: str) -> Any:
    json_item = content_type in ("", codec.JSON)
    if spec.kind == "json":
        if not json_item:
            raise ValueError(f"expected a JSON item, got {content_type!r}")
        data = bytes(data)  # a view into a large frame (link_io.InputFrame): pydantic reads bytes
        if spec.adapter is None:
            return codec.decode_json(data)
        return spec.adapter.validate_json(data)
    if content_type == codec.NPY and spec.kind in ("npy", "binary"):
        array = codec.decode_npy(data)
        codec.check_argument_dtype(array)
        return array
    if content_type == codec.BYTES and spec.kind in ("bytes", "binary"):
        return bytes(data)
    wanted = {"npy": codec.NPY, "bytes": codec.BYTES, "binary": f"{codec.NPY} or {codec.BYTES}"}[spec.kind]
    return _raise(f"expected {wanted}, got {content_type or codec.JSON!r}")


def _raise(message: str) -> Any:
    raise ValueError(message)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        parts = []
        for error in exc.errors(include_url=False):
            path = "".join(f"[{p!r}]" for p in error["loc"])
            got = repr(error.get("input"))[:80]
            parts.append(f"{path + ': ' if path else ''}{error['msg']} (got {got})")
        return "; ".join(parts)
    if isinstance(exc, codec.JSONValueError):
        where = codec.format_path(exc.path) if exc.path else "the item"
        return f"{where}: {exc.problem}"
    return str(exc)


def check_input(ctx: ToolContext) -> None:
    """Raise what made the call's input invalid, even if the tool caught it and ended normally."""
    caller = ctx._caller
    failure = caller.failure if isinstance(caller, Exchange) else None
    if failure is not None:
        raise failure


def finite_input(spec: InputSpec, tool: str, values: list[Any], is_async: bool) -> Iterator[Any] | AsyncIterator[Any]:
    """The whole input given as a JSON array in the arguments (HTTP POST, plain RPCs): validated item by item as
    the tool reads, like a streamed input."""
    exchange = Exchange(None, input_declared=False)
    exchange._open_input()
    exchange._tool, exchange._input = tool, spec
    exchange._items.extend((codec.encode_json(value), codec.JSON) for value in values)
    exchange._ended = (0, "")
    return exchange.iterator(is_async)
