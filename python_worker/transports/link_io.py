"""The local link's byte level: ``LinkFrame``s on the pool's pipe, and the worker's own output kept off it.

Each frame is a 4-byte big-endian length, then one serialized ``krait.v1.LinkFrame`` (``proto/krait/v1/link.proto``,
Erlang's ``{packet, 4}``). Frames from the pool are parsed with the generated classes. Frames to the pool are
framed by hand (``call_id``, ``kind``, then ``payload`` last), so that a large payload (a 4 MiB batch of arrays)
is written from its own buffer with ``os.writev``: building a protobuf message around it would copy it twice.
Field numbers are those of link.proto; a test parses the output with the generated classes.

Stdout is the frame channel, so nothing else may write to it: :func:`open_link` moves file descriptors 1
and 2 onto pipes of the worker's own, whose text becomes LOG records (a ``print()`` in a tool, or a C library
writing to stderr, can never corrupt a frame).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..logs import record_fields
from ..proto import link_pb
from ..wire import read_varint, skip_field, varint

log = logging.getLogger("krait.worker")

Kind = link_pb.LinkFrame.Kind
OPEN, STARTED, MESSAGE, END, CANCEL, CREDIT, LOG, READY = (
    Kind.OPEN,
    Kind.STARTED,
    Kind.MESSAGE,
    Kind.END,
    Kind.CANCEL,
    Kind.CREDIT,
    Kind.LOG,
    Kind.READY,
)
INPUT, INPUT_END, HANDLER_CALL, HANDLER_REPLY = Kind.INPUT, Kind.INPUT_END, Kind.HANDLER_CALL, Kind.HANDLER_REPLY

_LENGTH = struct.Struct(">I")
_KIND_FIELDS: dict[int, bytes] = {
    kind: b"\x10" + varint(kind) for kind in (STARTED, MESSAGE, END, LOG, READY, CREDIT, HANDLER_CALL)
}


_STARTED, _MESSAGE, _END = _KIND_FIELDS[STARTED], _KIND_FIELDS[MESSAGE], _KIND_FIELDS[END]
# a reply up to this size is joined into one buffer (one copy, one write); a larger one goes by writev uncopied
SMALL_REPLY = 64 << 10


def credit_frame(call_id: int, items: int, nbytes: int) -> bytes:
    """A CREDIT frame to the pool: the call's caller may send ``items`` more input items, ``nbytes`` more bytes."""
    fields = b"\x08" + varint(call_id) + _KIND_FIELDS[CREDIT] + b"\x30" + varint(nbytes) + b"\x40" + varint(items)
    return _LENGTH.pack(len(fields)) + fields


def frame_header(call_id: int, kind: int, payload_len: int, metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and every field of a frame to the pool but its payload's bytes (which come last)."""
    fields = (b"\x08" + varint(call_id) if call_id else b"") + _KIND_FIELDS[kind]
    for key, value in (metadata or {}).items():
        entry = _delimited(b"\x0a", key.encode()) + _delimited(b"\x12", value.encode())
        fields += _delimited(b"\x3a", entry)
    if payload_len:
        fields += b"\x2a" + varint(payload_len)
    return _LENGTH.pack(len(fields) + payload_len) + fields


JSON_CHUNKS = Kind.JSON_CHUNKS
_JSON_CHUNKS = b"\x10" + varint(JSON_CHUNKS)


def send_segments(writer: FrameWriter, call_id: int, segments: Iterable[tuple[int, list[bytes | memoryview]]]) -> None:
    """A stream's batch as frames, in one write (``os.writev``: no payload part is copied): each segment is
    ``(first_seq, parts)``, a ``JSON_CHUNKS`` frame whose array's first chunk is ``first_seq``, or ``(-1, parts)``,
    a ``MESSAGE`` (see ``wire.link_segments``). The payload is the concatenation of ``parts``."""
    out: list[bytes | memoryview] = []
    head = b"\x08" + varint(call_id)
    for first_seq, parts in segments:
        size = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
        if first_seq < 0:
            fields = head + _KIND_FIELDS[MESSAGE] + b"\x2a" + varint(size)
        elif first_seq:
            fields = head + _JSON_CHUNKS + b"\x48" + varint(first_seq) + b"\x2a" + varint(size)
        else:  # 0, protobuf's default, is not written
            fields = head + _JSON_CHUNKS + b"\x2a" + varint(size)
        out.append(_LENGTH.pack(len(fields) + size) + fields)
        out.extend(parts)
    writer._write(out)


def _delimited(tag: bytes, value: bytes) -> bytes:
    return tag + varint(len(value)) + value


class FrameWriter:
    """Writes whole frames to the pool; safe from any thread (a frame is never interleaved with another)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.closed = False

    def send(
        self, call_id: int, kind: int, payload: bytes | memoryview = b"", metadata: dict[str, str] | None = None
    ) -> None:
        if metadata:
            self._write([frame_header(call_id, kind, len(payload), metadata), payload])
        else:
            self.send_parts([(call_id, kind, payload)])

    def send_raw(self, frame: bytes) -> None:
        """A frame already framed (see :func:`credit_frame`), or several."""
        with self._lock:
            if self.closed:
                return
            try:
                written = os.write(self._fd, frame)
                if written < len(frame):
                    _write_all(self._fd, [frame], written)
            except OSError:  # the pool has gone: the reader sees EOF and the worker stops
                self.closed = True

    def send_started(self, call_id: int) -> None:
        """A call's STARTED frame (the hot path's own: no payload, nothing to frame but the id)."""
        fields = b"\x08" + varint(call_id) + _STARTED
        self.send_raw(_LENGTH.pack(len(fields)) + fields)

    def send_reply(self, call_id: int, payload: bytes) -> None:
        """A unary call's MESSAGE and its END with status OK (an empty payload), in one write; a small reply is
        joined into one buffer first."""
        head = b"\x08" + varint(call_id)
        message = head + _MESSAGE + b"\x2a" + varint(len(payload))
        end = head + _END
        tail = _LENGTH.pack(len(end)) + end
        if len(payload) < SMALL_REPLY:
            self.send_raw(b"".join((_LENGTH.pack(len(message) + len(payload)), message, payload, tail)))
        else:  # a large one is written from its own buffer (os.writev): no copy of it
            self._write([_LENGTH.pack(len(message) + len(payload)) + message, payload, tail])

    def send_parts(self, frames: Iterable[tuple[int, int, bytes | memoryview]]) -> None:
        """Several frames in one write (a unary call's MESSAGE and END, say)."""
        parts: list[bytes | memoryview] = []
        for call_id, kind, payload in frames:
            parts.append(frame_header(call_id, kind, len(payload)))
            if payload:
                parts.append(payload)
        self._write(parts)

    def _write(self, parts: list[bytes | memoryview]) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                # the usual case, one writev that takes everything; else the loop over what is left
                total = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
                written = os.writev(self._fd, parts) if len(parts) <= 1024 else 0
                if written < total:
                    _write_all(self._fd, [p for p in parts if p], written)
            except OSError:  # the pool has gone: the reader sees EOF and the worker stops
                self.closed = True


def _write_all(fd: int, parts: list[bytes | memoryview], skip: int = 0) -> None:
    """Write ``parts`` but their first ``skip`` bytes (already written)."""
    views = [memoryview(p).cast("B") for p in parts]
    while skip:
        if skip >= len(views[0]):
            skip -= len(views.pop(0))
        else:
            views[0] = views[0][skip:]
            skip = 0
    while views:
        written = os.writev(fd, views[:1024])
        while written:
            if written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0


# An INPUT frame at least this large is parsed by hand (see InputFrame): below it protobuf's parser is faster.
LARGE_INPUT = 64 << 10


class InputItem:
    """One item of an input batch parsed by hand: ``data`` a view into its frame (no copy)."""

    __slots__ = ("content_type", "data")

    def __init__(self, data: memoryview, content_type: str) -> None:
        self.data, self.content_type = data, content_type


class InputFrame:
    """A large INPUT frame, parsed by hand: its items' data are views into the frame as read from the pipe.
    Through protobuf a 4 MiB item would be copied four more times (into the LinkFrame and out of it, into the
    InputBatch and out of it); here the pipe's read is its only copy."""

    __slots__ = ("call_id", "items")

    kind = INPUT
    payload = b""

    def __init__(self, call_id: int, items: list[InputItem]) -> None:
        self.call_id, self.items = call_id, items


def _input_frame(body: bytes) -> InputFrame | None:
    """``body`` as an :class:`InputFrame` when it is an INPUT frame of the form the pool writes (call_id, kind,
    payload: an InputBatch of items with data and content_type); None for anything else (protobuf reads it)."""
    view = memoryview(body)
    try:
        call_id = kind = 0
        payload: memoryview | None = None
        pos, end = 0, len(view)
        while pos < end:
            key, pos = read_varint(view, pos)
            number, wire_type = key >> 3, key & 7
            if number == 1 and wire_type == 0:
                call_id, pos = read_varint(view, pos)
            elif number == 2 and wire_type == 0:
                kind, pos = read_varint(view, pos)
            elif number == 5 and wire_type == 2:
                size, pos = read_varint(view, pos)
                payload, pos = view[pos : pos + size], pos + size
            else:
                return None
        if kind != INPUT or payload is None or pos != end:
            return None
        return InputFrame(call_id, _input_items(payload))
    except (IndexError, ValueError):
        return None  # malformed: protobuf says how


def _input_items(batch: memoryview) -> list[InputItem]:
    items = []
    pos, end = 0, len(batch)
    while pos < end:
        key, pos = read_varint(batch, pos)
        if key != 0x0A:  # InputBatch.items (1, length-delimited) is its only field
            pos = skip_field(batch, pos, key & 7)
            continue
        size, pos = read_varint(batch, pos)
        item, pos = batch[pos : pos + size], pos + size
        data: memoryview = item[:0]
        content_type = ""
        at = 0
        while at < size:
            key, at = read_varint(item, at)
            if key in (0x0A, 0x12):  # data (1), content_type (2)
                length, at = read_varint(item, at)
                if key == 0x0A:
                    data = item[at : at + length]
                else:
                    content_type = str(item[at : at + length], "utf-8")
                at += length
            else:
                at = skip_field(item, at, key & 7)
        if at != size:
            raise ValueError("truncated input item")
        items.append(InputItem(data, content_type))
    if pos != end:
        raise ValueError("truncated input batch")
    return items


class FrameReader:
    """Reads frames from the pool; :meth:`read` returns None at end of input (the pool has gone)."""

    def __init__(self, fd: int) -> None:
        self._file = io.open(fd, "rb", buffering=1 << 16, closefd=False)  # noqa: SIM115, UP020 - an fd, not a path

    def read(self) -> Any | None:
        head = self._file.read(4)
        if len(head) < 4:
            return None
        (size,) = _LENGTH.unpack(head)
        body = self._file.read(size)
        if len(body) < size:
            return None
        if size >= LARGE_INPUT and (frame := _input_frame(body)) is not None:
            return frame
        return link_pb.LinkFrame.FromString(body)


def open_link() -> FrameWriter:
    """Take stdout for the link's frames and return their writer; file descriptors 1 and 2 then lead to pipes
    whose text becomes LOG records (see :func:`output_to_log`). Call it before anything else can write."""
    for fd in (0, 1):
        widen_pipe(fd)
    writer = FrameWriter(os.dup(1))
    on_text = output_to_log(writer)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        threading.Thread(target=_pump, args=(read_end, name, on_text), name=f"capture-{name}", daemon=True).start()
    return writer


# Linux gives a pipe 64 KiB; 1 MiB (the default /proc/sys/fs/pipe-max-size) let 4 MiB batches through at 3.4x
# and small chunks at 1.2x (measured side by side in scripts/bench), as the writer blocks and the BEAM's port
# wakes far less often.
PIPE_BYTES = 1 << 20


def widen_pipe(fd: int, size: int = PIPE_BYTES) -> None:
    """Grow the pipe behind ``fd`` to ``size`` bytes where the system allows it (Linux); else leave it."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    with contextlib.suppress(OSError):  # not a pipe, or above the system's limit for this user
        fcntl.fcntl(fd, setsize, size)


def _pump(fd: int, name: str, on_text: Callable[[str, str], None]) -> None:
    # each read is what was written at once (a print, a traceback): one record
    while chunk := os.read(fd, 65536):
        text = chunk.decode("utf-8", "replace").rstrip("\n")
        if text:
            on_text(name, text)


class LogFrameHandler(logging.Handler):
    """Sends each log record to the pool as one LOG frame (a ``krait.v1.LogRecord``)."""

    def __init__(self, writer: FrameWriter) -> None:
        super().__init__()
        self._writer = writer
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = record_fields(record, self._formatter)
            fields.pop("worker_id", None)  # the pool knows which worker it is
            self._writer.send(0, LOG, link_pb.LogRecord(**fields).SerializeToString())
        except Exception:
            self.handleError(record)


def output_to_log(writer: FrameWriter) -> Callable[[str, str], None]:
    """What :func:`open_link` does with a worker's stray output: a LOG record per write, logger
    ``stdout`` (INFO) or ``stderr`` (WARNING)."""

    def on_text(stream: str, text: str) -> None:
        level = "INFO" if stream == "stdout" else "WARNING"
        record = link_pb.LogRecord(level=level, logger=stream, message=text)
        writer.send(0, LOG, record.SerializeToString())

    return on_text
