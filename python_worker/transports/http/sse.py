"""Server-Sent Events: a stream's chunks as ``event: chunk``, then ``event: final`` or ``event: error``.

The events are written here rather than through ``sse-starlette``: the framing is three lines of text, and what
matters is the stream's life, which no SSE library knows: the response watches the connection itself (an ASGI
``http.disconnect``) and cancels the call the moment the client goes, even while the stream is quiet (a
Starlette ``StreamingResponse`` notices a departure only when it next writes, under ASGI 2.4). A comment line
is sent every :data:`KEEPALIVE_S` of silence so proxies and browsers keep an idle stream open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from .chunks import chunk_json
from .errors import error_body
from .feed import StreamFeed

KEEPALIVE_S = 15.0

ErrorReporter = Callable[[BaseException], dict[str, Any]]


def event(name: str, data: bytes, event_id: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


class SSEResponse:
    """The ASGI response of an opened :class:`StreamFeed`; ``report`` turns the error that ends the stream into
    the contract's error object (and logs it)."""

    def __init__(self, feed: StreamFeed, report: ErrorReporter) -> None:
        self.feed = feed
        self.report = report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self._send_events(send))
        watcher = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait([sender, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.feed.cancel()  # a no-op after the stream's end; otherwise the client went
            for task in (sender, watcher):
                task.cancel()
            for task in (sender, watcher):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await self.feed.wait_closed()

    async def _send_events(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
                ],
            }
        )
        while True:
            try:
                chunk = await asyncio.wait_for(self.feed.next(), KEEPALIVE_S)
            except TimeoutError:
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                continue
            if chunk is None:
                break
            seq, is_final = chunk[0], chunk[3]
            name = "final" if is_final else "chunk"
            body = chunk_json(chunk, self.feed.final_extra if is_final else None)
            await send({"type": "http.response.body", "body": event(name, body, seq), "more_body": True})
        if self.feed.error is not None:
            payload = error_body(self.report(self.feed.error))
            await send({"type": "http.response.body", "body": event("error", payload), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone."""
    while (await receive())["type"] != "http.disconnect":
        pass
