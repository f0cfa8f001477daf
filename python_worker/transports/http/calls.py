"""Running calls from the event loop: the request from HTTP inputs, a unary call on the front's executor with
its deadline and its caller's departure, and the parameters a stream takes.

A unary tool runs on an executor thread (the engine runs it on the calling thread, as grpcio's would). When the
deadline passes or the caller goes, the tool's cancel flag is raised and the answer is given at once; a tool
deaf to the flag keeps its thread and call slot until it returns, as with gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Mapping
from concurrent.futures import Executor
from typing import Any

from ... import codec
from ...engine import Engine
from ...engine.exchange import Exchange
from ...proto import pb
from ...sdk import ToolContext
from .errors import deadline_exceeded, invalid
from .feed import OVERFLOWS

# request headers passed to the engine as call metadata: the caller's call id (logs) and trace context
FORWARDED_HEADERS = ("krait-call-id", "traceparent", "tracestate")
MAX_TIMEOUT_MS = 2**31 - 1  # ~24.8 days: a larger deadline is a mistake (and 10**400 ms overflows a float)


class Gone(Exception):
    """The caller went away before the answer."""


def parse_args(body: bytes | str, where: str) -> str:
    """Check that ``body`` is a JSON object of arguments; returns it as the request's ``args_json``. Errors name
    ``where`` the arguments came from (the request body, the ``args`` parameter, a frame's ``args``)."""
    if isinstance(body, bytes):
        try:
            text = body.decode()
        except UnicodeDecodeError as exc:
            raise invalid(f"{where} is not valid UTF-8: {exc}") from None
    else:
        text = body
    if not text.strip():
        return ""
    try:
        args = codec.decode_json(text)
    except ValueError as exc:
        raise invalid(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise invalid(f"{where} must be a JSON object of arguments, got {type(args).__name__}")
    return text


def build_request(tool: str, args_json: str, session: str | None, metadata: Mapping[str, str]) -> Any:
    return pb.ExecuteToolRequest(tool_name=tool, args_json=args_json, session_id=session or "", metadata=metadata)


def timeout_ms(value: Any, where: str = "timeout_ms") -> int | None:
    """A deadline in ms (a positive integer), or None."""
    if value is None or value == "":
        return None
    try:
        ms = int(value)
    except (TypeError, ValueError):
        raise invalid(f"{where} must be a positive integer (milliseconds), got {str(value)[:40]!r}") from None
    if ms <= 0 or ms > MAX_TIMEOUT_MS or isinstance(value, bool):
        shown = str(ms) if len(str(value)) <= 40 else f"{str(value)[:40]}..."
        raise invalid(f"{where} must be a positive integer up to {MAX_TIMEOUT_MS} (milliseconds), got {shown}")
    return ms


def max_rate(value: Any, where: str = "max_rate_hz") -> float | None:
    """A rate in Hz (a positive finite number), or None."""
    if value is None or value == "":
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise invalid(f"{where} must be a positive number (chunk events per second), got {str(value)[:40]!r}") from None
    if not (rate > 0 and math.isfinite(rate)) or isinstance(value, bool):
        raise invalid(f"{where} must be a positive number (chunk events per second), got {value}")
    return rate


def overflow(value: Any, where: str = "overflow") -> str:
    if value is None or value == "":
        return "block"
    if value not in OVERFLOWS:
        raise invalid(f"{where} must be one of {', '.join(OVERFLOWS)}, got {str(value)[:40]!r}")
    return str(value)


async def run_unary(
    engine: Engine,
    executor: Executor,
    request: Any,
    metadata: Mapping[str, str],
    *,
    deadline_ms: int | None,
    gone: Awaitable[Any] | None = None,
    exchange: Exchange | None = None,
) -> Any:
    """Run a unary call; its ``ExecuteToolResponse``. Raises what ends it, :class:`Gone` when ``gone`` completes
    first (the caller left), a DEADLINE_EXCEEDED error past ``deadline_ms``. ``exchange``: the call's input and
    handler calls (WebSocket); None: neither (the engine's default)."""
    loop = asyncio.get_running_loop()
    holder: list[ToolContext] = []
    stopped: list[str] = []  # why the call was cut short, once it was (CANCELLED, DEADLINE_EXCEEDED)

    def ready(ctx: ToolContext) -> None:  # on the executor thread, before the tool runs
        holder.append(ctx)
        if stopped:
            ctx.cancel_event.set(stopped[0])

    def cancel(reason: str) -> None:
        stopped.append(reason)
        if holder:
            holder[0].cancel_event.set(reason)

    def execute() -> tuple[Any, BaseException | None]:
        # the error is handed back, not re-raised through the future: it keeps the tool's traceback as it was
        try:
            return engine.execute(request, metadata, on_ready=ready, exchange=exchange), None
        except Exception as exc:
            return None, exc

    call = loop.run_in_executor(executor, execute)
    waiter = asyncio.ensure_future(gone) if gone is not None else None
    try:
        done, _ = await asyncio.wait(
            [call, waiter] if waiter is not None else [call],
            timeout=deadline_ms / 1000 if deadline_ms else None,
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        cancel("CANCELLED")
        _forget(call)
        raise
    finally:
        if waiter is not None:
            waiter.cancel()
    if call in done:
        response, error = call.result()
        if error is not None:
            raise error
        return response
    gone_first = waiter is not None and waiter in done
    cancel("CANCELLED" if gone_first else "DEADLINE_EXCEEDED")  # the tool's flag; a late answer is dropped
    _forget(call)
    if gone_first:
        raise Gone
    raise deadline_exceeded(deadline_ms or 0)


def _forget(future: asyncio.Future[Any]) -> None:
    # the call's outcome is no longer wanted: retrieve it when it comes, so asyncio does not report it as lost
    def retrieve(f: asyncio.Future[Any]) -> None:
        with contextlib.suppress(BaseException):
            f.exception()

    future.add_done_callback(retrieve)
