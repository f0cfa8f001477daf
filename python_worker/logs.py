"""The worker's log: text for a human at a terminal, or one JSON record per line for a supervisor.

Over the local link (``serve --link``) every record is one LOG frame (:mod:`..transports.link_io`); otherwise
``--log-format json`` writes every record as one line on stderr, ``KRAIT_LOG `` and a JSON object::

    {"level": "WARNING", "logger": "krait.worker", "message": "...", "worker_id": "w1",
     "exception": "Traceback ...",                           (only when the record carries an exception)
     "tool": "train", "session_id": "s1", "call_id": "...",  (only for records emitted during a call)
     "trace_id": "4bf9..."}                                  (and its span's trace id, when it records one)

A record "during a call" is one emitted on the call's gRPC thread or on its streaming tool's thread, whoever
logs it (Krait, the adapter, a library): the call is held in a context variable set by the call machinery
(:func:`in_call`) and copied to the tool's thread. Uncaught exceptions in any thread become records too, so a
traceback is never printed line by line beside them.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
from collections.abc import Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import NamedTuple

from .errors import clip

LOG_PREFIX = "KRAIT_LOG "
CALL_ID_HEADER = "krait-call-id"
MAX_CALL_ID_CHARS = 64


class CallInfo(NamedTuple):
    """The call a log record belongs to (names clipped: they come from the caller). A named tuple: made for
    every call, and a frozen dataclass's ``__init__`` costs several times as much."""

    tool: str
    session_id: str
    call_id: str
    trace_id: str = ""  # the call's span's trace id, once it has one


CURRENT_CALL: ContextVar[CallInfo | None] = ContextVar("krait_call", default=None)


def call_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``krait-call-id`` (printable ASCII, at most 64 characters), or a new id."""
    for key, value in metadata or ():
        if key == CALL_ID_HEADER and isinstance(value, str):
            return clean_call_id(value)
    return secrets.token_hex(8)


def clean_call_id(value: str) -> str:
    """A caller's call id as logged: its printable ASCII, at most 64 characters; a new id when none is left."""
    if value.isascii() and value.isprintable():  # the usual case: nothing to drop (one pass in C)
        cleaned = value[: MAX_CALL_ID_CHARS * 4].strip()
    else:
        cleaned = "".join(c for c in value[: MAX_CALL_ID_CHARS * 4] if " " <= c <= "~").strip()
    return cleaned[:MAX_CALL_ID_CHARS] if cleaned else secrets.token_hex(8)


def in_call(tool: str, session_id: str, call_id: str) -> CallInfo:
    """Mark this thread's records as the call's until :func:`call_ended`."""
    info = CallInfo(clip(tool), clip(session_id), call_id)
    CURRENT_CALL.set(info)
    return info


def with_trace(info: CallInfo, trace_id: str) -> CallInfo:
    """Mark this thread's records with the call's trace id too (known once its span has started)."""
    info = info._replace(trace_id=trace_id)
    CURRENT_CALL.set(info)
    return info


def call_ended() -> None:
    # set, not reset with a token: a streaming handler's generator may be finalized outside the context that
    # set it, and a gRPC pool thread runs one call at a time
    CURRENT_CALL.set(None)


class _CallFields(logging.Filter):
    """Adds ``worker_id`` and the current call's fields to every record."""

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker_id = self.worker_id
        call = CURRENT_CALL.get()
        record.krait_call = call
        record.call_text = f" {call.tool} call={call.call_id}" if call is not None else ""
        return True


def _text(value: str) -> str:
    # a record may carry lone surrogates (from a file name, say): never let one break the line or the encoder
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    """A record as the fields of a ``krait.v1.LogRecord`` (and of its JSON line): level, logger, message, the
    traceback when it has one, the worker, and the call it was emitted in."""
    message = record.getMessage()
    if record.stack_info:
        message += "\n" + formatter.formatStack(record.stack_info)
    out: dict[str, str] = {"level": record.levelname, "logger": record.name, "message": _text(message)}
    if record.exc_info:
        out["exception"] = _text(formatter.formatException(record.exc_info))
    elif record.exc_text:
        out["exception"] = _text(record.exc_text)
    out["worker_id"] = getattr(record, "worker_id", "")
    call: CallInfo | None = getattr(record, "krait_call", None)
    if call is not None:
        out["tool"], out["session_id"], out["call_id"] = call.tool, call.session_id, call.call_id
        if call.trace_id:
            out["trace_id"] = call.trace_id
    return out


class JsonFormatter(logging.Formatter):
    """One ``KRAIT_LOG {json}`` line per record."""

    def format(self, record: logging.LogRecord) -> str:
        return LOG_PREFIX + json.dumps(record_fields(record, self), ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(worker_id)s%(call_text)s] %(name)s: %(message)s"


def configure(*, log_format: str, level: str, worker_id: str, handler: logging.Handler | None = None) -> None:
    """Send every record to stderr in ``log_format`` (``text`` or ``json``), or to ``handler`` (the local
    link's), each carrying ``worker_id`` and its call."""
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_CallFields(worker_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.captureWarnings(True)  # warnings.warn becomes a record, not raw lines on stderr
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, trace: TracebackType | None) -> None:
    logging.getLogger("krait.worker").critical("uncaught exception", exc_info=(kind, exc, trace))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    logging.getLogger("krait.worker").error("uncaught exception in thread %s", name, exc_info=exc_info)
