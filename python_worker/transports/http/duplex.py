"""The WebSocket's side of streams both ways: the client's ``input`` / ``input_end`` / ``handler_reply`` frames as
what a call's :class:`~python_worker.engine.exchange.Exchange` takes, and the exchange's credit and handler calls
as ``credit`` / ``handler_call`` events (docs/http.md, "Input streams and handler calls").

Parsing and formatting, and the client's credit (:class:`InputGate`); :mod:`.websocket` routes the frames to the
calls. A malformed frame raises an INVALID_ARGUMENT :class:`~.errors.HttpError` naming what is wrong. What a
client can make the worker hold is bounded: a frame by the front's WebSocket message limit (``--max-json-mb``),
a call's input by its credit (one window in the gate, one in the exchange; input beyond it is refused).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ... import codec
from ...errors import InvalidArguments
from ...proto import pb
from .errors import invalid

# InputEnd.code of an input the caller reports failed (gRPC's UNKNOWN: the caller's own error)
INPUT_FAILED = 2
MAX_DIMS = 32  # an array item's dimensions (NumPy allows 64; no frame needs more than a few)
MAX_DTYPE_CHARS = 64
NOT_INPUT = (
    "binary frames are not accepted except as input items: a 4-byte big-endian header length, a JSON header"
    ' {"op": "input", "id", ...}, then the raw bytes'
)


@dataclass(frozen=True, slots=True)
class Item:
    """One input item, as an exchange takes it (what ``pb.InputItem`` holds, without building a message)."""

    data: bytes
    content_type: str


def json_items(frame: dict[str, Any]) -> list[Item]:
    """The items of an ``input`` text frame: ``"items"``, a JSON array, each item one JSON document."""
    items = frame.get("items")
    if not isinstance(items, list):
        raise invalid(f"an input frame needs 'items': a JSON array of input items, got {_kind(items)}")
    return [Item(orjson.dumps(item), codec.JSON) for item in items]


def binary_input(frame: bytes) -> tuple[str | None, Item | None, Exception | None]:
    """A binary frame as ``(call id, item, error)``: the item when the frame is a well-formed input item, else
    the error to answer with (and the call id when the header named one). Its cost (:class:`InputGate`) is
    :func:`raw_size`."""
    if len(frame) < 4:
        return None, None, invalid(f"{NOT_INPUT}; this frame holds {len(frame)} bytes")
    size = int.from_bytes(frame[:4], "big")
    if size > len(frame) - 4:
        return None, None, invalid(f"{NOT_INPUT}; the header length {size} is beyond the frame's {len(frame)} bytes")
    try:
        header = orjson.loads(frame[4 : 4 + size])
    except orjson.JSONDecodeError as exc:
        return None, None, invalid(f"{NOT_INPUT}; the header is not valid JSON: {exc}")
    if not isinstance(header, dict):
        return None, None, invalid(f"{NOT_INPUT}; the header must be a JSON object, got {_kind(header)}")
    call_id = header.get("id") if isinstance(header.get("id"), str) else None
    if header.get("op") != "input":
        return call_id, None, invalid(f"{NOT_INPUT}; this header's op is {str(header.get('op'))[:40]!r}")
    raw = memoryview(frame)[4 + size :]
    try:
        return call_id, _binary_item(header, raw), None
    except Exception as exc:
        return call_id, None, exc


def raw_size(frame: bytes) -> int:
    """The raw bytes of a well-formed binary frame: what it costs the client's byte credit."""
    return len(frame) - 4 - int.from_bytes(frame[:4], "big")


def _binary_item(header: dict[str, Any], raw: memoryview) -> Item:
    content_type = header.get("content_type")
    if "dtype" in header or "shape" in header:
        if content_type not in (None, codec.NPY):
            raise invalid(f"a binary input item with 'dtype' is an array: its content_type is {codec.NPY} or absent")
        return Item(_npy(header.get("dtype"), header.get("shape"), raw), codec.NPY)
    if content_type == codec.BYTES:
        return Item(bytes(raw), codec.BYTES)
    raise invalid(
        "a binary input item needs 'dtype' and 'shape' (an array, its raw C-order bytes) or 'content_type':"
        f" '{codec.BYTES}' (bytes), got content_type {str(content_type)[:60]!r}"
    )


def _npy(dtype_text: Any, shape: Any, raw: memoryview) -> bytes:
    """An ``.npy`` payload of ``raw`` (C order) with the given dtype and shape."""
    if not isinstance(dtype_text, str) or not 0 < len(dtype_text) <= MAX_DTYPE_CHARS:
        raise invalid(
            f"an array input item's 'dtype' must be a NumPy dtype string such as '<f4', got {_kind(dtype_text)}"
        )
    try:
        dtype = np.dtype(dtype_text)
    except (TypeError, ValueError, SyntaxError):
        raise invalid(
            f"an array input item's 'dtype' {dtype_text!r} is not a NumPy dtype (such as '<f4', '<i2')"
        ) from None
    try:
        codec.check_argument_dtype(np.empty(0, dtype))
    except ValueError as exc:
        raise invalid(f"an array input item's {exc}") from None
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise invalid(
            f"an array input item's 'shape' must be a list of at most {MAX_DIMS} non-negative integers,"
            f" got {str(shape)[:80]}"
        )
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise invalid(
            f"an array input item of dtype {dtype_text} and shape {shape} needs {need} data bytes, the frame holds"
            f" {len(raw)}"
        )
    # the header needs only the dtype and shape: a broadcast view of one element has both, holding nothing
    header = codec.npy_header(np.broadcast_to(np.empty((), dtype), tuple(shape)))
    return b"".join((header, raw))


def input_end(frame: dict[str, Any]) -> tuple[int, str]:
    """An ``input_end`` frame as ``(code, message)``: code 0 when the input ended, else the caller's error."""
    error = frame.get("error")
    if error is None:
        return 0, ""
    if not isinstance(error, str):
        raise invalid(f"an input_end frame's 'error' must be a string (the caller's message), got {_kind(error)}")
    return INPUT_FAILED, error or "the caller's input failed"


def handler_reply(frame: dict[str, Any]) -> Any:
    """A ``handler_reply`` frame as a ``pb.HandlerReply``: ``"call"`` (the handler call's number) and its
    ``"value"`` (any JSON; absent is null) or ``"error": {"type", "message"}``."""
    number = frame.get("call")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**64:
        raise invalid(f"a handler_reply frame needs 'call': the handler call's number, got {_kind(number)}")
    error = frame.get("error")
    if error is None:
        return pb.HandlerReply(id=number, data=orjson.dumps(frame.get("value")), content_type=codec.JSON)
    if "value" in frame:
        raise invalid("a handler_reply frame has 'value' or 'error', not both")
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("message"), str)
        or not isinstance(error.get("type", "HandlerFailed"), str)
    ):
        raise invalid('a handler_reply\'s \'error\' must be {"type": "...", "message": "..."} (strings)')
    failure = pb.HandlerFailure(type=error.get("type") or "HandlerFailed", message=error["message"])
    return pb.HandlerReply(id=number, error=failure)


class InputGate:
    """A call's input credit in what a WebSocket client can count exactly: an input frame costs its number of items
    and bytes: a text frame its UTF-8 length, a binary frame its raw bytes (after the header).

    The exchange counts the bytes of the items it holds, which a client cannot know (an array item becomes an
    ``.npy`` payload with a header; a JSON item is encoded again): crediting the client with the exchange's own
    grants would let the two counts drift apart, until a well-behaved client is refused or starves. So the gate
    keeps the client's credit itself: the first credit is the exchange's window; frames the client sends within
    it are handed to the exchange as far as the exchange's credit allows (held here, in order, otherwise), and
    their cost goes back to the client, a quarter window at a time, as they are handed over. What a client can
    make the worker hold is one window here and one in the exchange (plus one frame of overshoot). Frames beyond
    the credit are refused INVALID_ARGUMENT. Used on the socket's event loop only."""

    def __init__(self, exchange: Any, tool: str, send_credit: Callable[[int, int], None]) -> None:
        self._exchange = exchange
        self._tool = tool
        self._send_credit = send_credit
        self._window: tuple[int, int] | None = None  # the exchange's first grant: the client's window
        self._client = [0, 0]  # items and bytes the client may still send
        self._owed = [0, 0]  # handed to the exchange since the client's last credit
        self._room = [0, 0]  # the exchange's credit (what it granted, less what it was handed)
        self._held: deque[tuple[Item, int]] = deque()  # each item and the cost it frees once handed over
        self._end: tuple[int, str] | None = None
        self._ended = False  # the end was handed to the exchange

    def granted(self, items: int, nbytes: int) -> None:
        """The exchange granted credit (its first grant opens the client's window)."""
        if self._window is None:
            self._window = (items, nbytes)
            self._client = [items, nbytes]
            self._send_credit(items, nbytes)
        self._room[0] += items
        self._room[1] += nbytes
        self._flush()

    def offer(self, items: list[Item], cost: int) -> None:
        """A frame of ``items`` costing ``cost`` bytes. Raises (a ``CallError``) what ends the call."""
        if self._end is not None:
            raise InvalidArguments(f"{self._tool}: input after input_end")
        if self._window is None:
            self._exchange.feed(items)  # no credit yet: the exchange says why it takes no input
            return
        client = self._client
        if client[0] < len(items) or client[1] <= 0:
            raise InvalidArguments(
                f"{self._tool}: input beyond the credit granted ({len(items)} items in a frame of {cost} bytes;"
                f" the credit left is {client[0]} items and {client[1]} bytes): send input frames only within the"
                " credit events' items and bytes"
            )
        client[0] -= len(items)
        client[1] -= cost
        last = len(items) - 1
        self._held.extend((item, cost if i == last else 0) for i, item in enumerate(items))
        self._flush()

    def end(self, code: int, message: str) -> None:
        """``input_end``: handed to the exchange after the items before it (a second one is ignored)."""
        if self._end is None:
            self._end = (code, message)
            self._flush()

    def _flush(self) -> None:
        held, room, owed = self._held, self._room, self._owed
        batch = []
        while held and room[0] > 0 and room[1] > 0:
            item, cost = held.popleft()
            room[0] -= 1
            room[1] -= len(item.data)
            owed[0] += 1
            owed[1] += cost
            batch.append(item)
        if batch:
            self._exchange.feed(batch)
        if not held and self._end is not None and not self._ended:
            self._ended = True
            self._exchange.end_input(*self._end)
        window = self._window
        if window is not None and self._end is None and (owed[0] >= window[0] // 4 or owed[1] >= window[1] // 4):
            self._client[0] += owed[0]
            self._client[1] += owed[1]
            self._send_credit(owed[0], owed[1])
            self._owed = [0, 0]


class SocketPeer:
    """What one call's exchange reaches its WebSocket client through (:class:`~python_worker.engine.exchange.Peer`):
    ``grant`` and ``handler_call`` come from the engine's and the tool's threads and hop to the socket's event
    loop with ``run_on_loop``; ``emit`` sends a frame from the loop. Once :meth:`close` d (the call's last event is
    on its way) nothing more is sent."""

    def __init__(
        self, call_id: str, run_on_loop: Callable[[Callable[[], None]], None], emit: Callable[[SocketPeer, str], None]
    ) -> None:
        self.call_id = call_id
        self._prefix = '{"id":' + orjson.dumps(call_id).decode()
        self._run_on_loop = run_on_loop
        self._emit = emit
        self.gate: InputGate | None = None  # set once the call's exchange exists
        self.closed = False

    def grant(self, items: int, nbytes: int) -> None:
        gate = self.gate
        if gate is not None and not self.closed:
            self._run_on_loop(lambda: None if self.closed else gate.granted(items, nbytes))

    def handler_call(self, call: Any) -> None:
        # args_json is the engine's own encoding of the tool's arguments: spliced in, not re-encoded
        args = call.args_json or "null"
        name = orjson.dumps(call.name).decode()
        frame = (
            f'{self._prefix},"event":"handler_call","call":{int(call.id)},"name":{name},"args":{args},'
            f'"timeout_ms":{int(call.timeout_ms)}}}'
        )
        if not self.closed:
            self._run_on_loop(lambda: self._emit(self, frame))

    def credit(self, items: int, nbytes: int) -> None:
        """Send a credit event (on the loop)."""
        self._emit(self, f'{self._prefix},"event":"credit","items":{int(items)},"bytes":{int(nbytes)}}}')

    def close(self) -> None:
        self.closed = True


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
