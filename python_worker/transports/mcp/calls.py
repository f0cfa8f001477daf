"""``tools/call`` through the engine, from the MCP server's event loop: the same call slots, validation,
sessions, cancellation and errors as every other front, driven the way the HTTP front drives them
(:func:`..http.calls.run_unary` for a unary tool, :class:`..http.feed.StreamFeed` for a stream).

A stream's chunks, each the HTTP front's chunk JSON, go out as they come:

- with a progress token (``_meta.progressToken``), as one ``notifications/progress`` each, in order:
  ``progress`` = the chunk's ``seq`` + 1, ``message`` = the chunk JSON. The call's result then summarises the
  stream: ``{"chunk_count", "final"}`` (the final chunk: the tool's own ``StreamChunk(is_final=True)`` or the
  synthetic one, with its metadata). The next progress waits until the last one is written: a slow client
  backpressures the tool at its ``yield``, as over gRPC.
- without one, the result carries them too, under ``chunks``, up to :data:`MAX_COLLECTED_BYTES` of chunk JSON:
  beyond that the oldest are left out and counted (``omitted_chunks``), so memory stays bounded and the newest
  state of a long stream survives.

``notifications/cancelled`` interrupts the handler (the ``mcp`` package cancels its task); so does the client
going (stdin closing; the HTTP session deleted); a client that cuts a call's HTTP response stream cancels that
call (:meth:`Calls.abandon`: without an event store nothing could resume it, and its tool would hold a slot).
Either way the tool's cancel flag is raised and its generator
closed: its ``finally`` runs on its own thread, and the handler waits (shielded, at most
:data:`CLOSE_WAIT_S`) for the call's slot to be freed before it lets the cancellation through.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import anyio
import grpc
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params

from ...engine import Engine
from ...errors import CallError
from ..http.calls import Gone, build_request, run_unary
from ..http.chunks import chunk_json
from ..http.errors import cancelled
from ..http.feed import StreamFeed
from .errors import SERVER_BUSY, answer, invalid
from .results import chunk_text, stream_result, unary_result

# After a stream's last progress notification, the result waits this long: the TypeScript SDK handles a
# notification a microtask later than a response, and drops progress that it reads in the same batch as the
# result (modelcontextprotocol/typescript-sdk#2580); a pause lets the client read the notifications first.
PROGRESS_SETTLE_S = 0.02
MAX_COLLECTED_BYTES = 1 << 20  # a stream's chunks kept for a result when they are not sent as progress
CLOSE_WAIT_S = 5.0  # how long a cancelled call waits for its tool to wind down (a deaf unary tool keeps its slot)

Track = Callable[[Callable[[BaseException], None]], Callable[[], None]]
SessionOf = Callable[[Any], str | None]
MetadataOf = Callable[[Any], dict[str, str]]


class Live:
    """The calls in flight of one MCP server that is not the HTTP front's (stdio): what stops them all when
    the worker stops (the HTTP front has its own, :meth:`..http.front.Front.track`)."""

    def __init__(self) -> None:
        self._cancels: set[Callable[[BaseException], None]] = set()
        self.stopping = False

    def track(self, cancel: Callable[[BaseException], None]) -> Callable[[], None]:
        self._cancels.add(cancel)
        return lambda: self._cancels.discard(cancel)

    def cancel_all(self) -> None:
        """On the server's loop: refuse new calls, stop every call in flight."""
        self.stopping = True
        for cancel in list(self._cancels):
            cancel(stopping())

    def __len__(self) -> int:
        return len(self._cancels)


def stopping() -> CallError:
    return CallError("the worker is stopping", code=grpc.StatusCode.UNAVAILABLE, error_type="WorkerStopping")


class Calls:
    """The ``tools/call`` handler of one MCP server."""

    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        *,
        track: Track,
        session_of: SessionOf,
        metadata_of: MetadataOf,
        is_stopping: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.executor = executor
        self.track = track
        self.session_of = session_of
        self.metadata_of = metadata_of
        self.is_stopping = is_stopping
        # calls by (Krait session, JSON-RPC id): what abandon() cancels when an HTTP response stream is cut
        self._by_request: dict[tuple[str | None, str], Callable[[BaseException], None]] = {}

    def abandon(self, session: str | None, request_id: Any) -> None:
        """The client cut the response stream of request ``request_id``: cancel that call, if still running."""
        cancel = self._by_request.get((session, str(request_id)))
        if cancel is not None:
            cancel(cancelled("the client went away"))

    def _track(self, ctx: Any, session: str | None, cancel: Callable[[BaseException], None]) -> Callable[[], None]:
        untrack = self.track(cancel)
        key = (session, str(ctx.request_id))
        self._by_request[key] = cancel

        def both() -> None:
            untrack()
            if self._by_request.get(key) is cancel:
                del self._by_request[key]

        return both

    async def call_tool(self, ctx: Any, params: Any) -> Any:
        name: str = params.name
        if self.is_stopping():
            raise MCPError(SERVER_BUSY, "the worker is stopping", {"type": "WorkerStopping", "code": "UNAVAILABLE"})
        try:
            # allow_nan: a NaN or an infinity reaches the engine's own check, which names the argument
            args_json = json.dumps(params.arguments or {}, allow_nan=True, ensure_ascii=False)
        except (ValueError, TypeError, RecursionError):
            raise invalid(f"{name[:64]}: the arguments are nested too deeply") from None
        metadata = self.metadata_of(ctx)
        session = self.session_of(ctx)
        request = build_request(name, args_json, session, metadata)
        spec = self.engine.specs.get(name)
        if spec is not None and spec.supports_streaming:
            return await self._stream(ctx, session, name, request, metadata)
        return await self._unary(ctx, session, name, request, metadata)

    async def _unary(self, ctx: Any, session: str | None, name: str, request: Any, metadata: Mapping[str, str]) -> Any:
        stop = anyio.Event()
        reasons: list[BaseException] = []

        def cancel(reason: BaseException) -> None:
            reasons.append(reason)
            stop.set()

        untrack = self._track(ctx, session, cancel)
        try:
            response = await run_unary(
                self.engine, self.executor, request, metadata, deadline_ms=None, gone=stop.wait()
            )
        except Gone:  # the worker's stop, or the client gone
            return answer(self.engine, reasons[0], name)
        except Exception as exc:
            return answer(self.engine, exc, name)
        finally:
            untrack()
        return unary_result(name, self.engine.worker_id, response.data, response.content_type, response.metadata)

    async def _stream(self, ctx: Any, session: str | None, name: str, request: Any, metadata: Mapping[str, str]) -> Any:
        token = progress_token_from_params(ctx.params)
        feed = StreamFeed(self.engine, request, metadata, executor=self.executor)
        try:
            await feed.open()
        except Exception as exc:
            feed.cancel()
            return answer(self.engine, exc, name)
        untrack = self._track(ctx, session, feed.cancel)
        count, final, omitted, size = 0, None, 0, 0
        kept: deque[bytes] = deque()
        try:
            while (chunk := await feed.next()) is not None:
                if chunk[3]:
                    final = chunk
                    continue
                count += 1
                if token is not None:
                    await ctx.session.report_progress(float(chunk[0] + 1), None, chunk_text(chunk))
                    continue
                body = chunk_json(chunk)
                kept.append(body)
                size += len(body)
                while size > MAX_COLLECTED_BYTES and len(kept) > 1:
                    size -= len(kept.popleft())
                    omitted += 1
        except BaseException:  # cancelled: notifications/cancelled, the client gone, the server stopping
            feed.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_WAIT_S):
                await feed.wait_closed()
            raise
        finally:
            untrack()
        if token is not None and count:
            await anyio.sleep(PROGRESS_SETTLE_S)
        if feed.error is not None:
            return answer(self.engine, feed.error, name)
        assert final is not None  # a stream that ended without error ends with its final chunk
        return stream_result(final, count, list(kept) if token is None else None, omitted)
