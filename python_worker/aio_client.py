"""An asyncio client for Krait workers, on ``grpc.aio``: the async twin of :class:`python_worker.client.Client`.

    async with AsyncClient("127.0.0.1:50051", timeout=60) as client:
        print(await client.execute("add", a=1, b=2))
        async for chunk in client.execute_stream("stream_progress", steps=3):
            print(chunk.data, chunk.is_final)

Chunks, errors and arguments are those of the sync client (:class:`~python_worker.client.Chunk`,
:class:`~python_worker.client.KraitError` and its subclasses; arrays and bytes travel as binary arguments).
Leaving a stream early (``break``, an exception, ``aclose()``, the end of its ``async with``) cancels the call
on the worker. Create the client inside a running event loop, as ``grpc.aio`` channels belong to one.
Also importable as ``python_worker.client.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio

from . import codec
from .client import Chunk, _Connection, _translate
from .proto import pb
from .wire import Decoded


class AsyncChunkStream:
    """An async iterator of :class:`Chunk` over a running streaming call; ``aclose()`` cancels it."""

    def __init__(self, call: Any, timeout: float | None = None) -> None:
        self._call = call
        self._timeout = timeout  # named by the error of a call past its deadline
        self._ready: collections.deque[Decoded] = collections.deque()
        self._done = False

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> Chunk:
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            try:
                batch = await self._call.read()
            except grpc.RpcError as error:
                self._done = True
                raise _translate(error, streaming=True, timeout=self._timeout) from None
            if batch is grpc.aio.EOF:
                self._done = True
                raise StopAsyncIteration
            self._ready.extend(batch)
        seq, data, content_type, is_final, meta = self._ready.popleft()
        return Chunk(seq, codec.decode_value(data, content_type), content_type, is_final, meta)

    async def aclose(self) -> None:
        """Cancel the call on the worker (a no-op once the stream has ended)."""
        self._done = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # dropped without aclose() (a ``break`` out of ``async for``): stop the call on the worker
        with contextlib.suppress(Exception):  # the loop may already be closed at interpreter exit
            self._call.cancel()


class AsyncClient(_Connection):
    """A ``grpc.aio`` connection to one Krait worker at ``target`` (``host:port``).

    ``timeout`` (seconds) is the default deadline of every call; ``session_id`` the default session;
    ``token`` (by default ``token_file``'s, else ``$KRAIT_TOKEN``, else the file ``$KRAIT_TOKEN_FILE`` names), ``tls``
    and ``channel`` (a ``grpc.aio.Channel``) as for :class:`~python_worker.client.Client`.
    """

    _grpc = grpc.aio

    # -- calls ----------------------------------------------------------------------------------------------
    async def execute(self, tool: str, /, **args: Any) -> Any:
        """Run a non-streaming tool with keyword arguments and return its decoded value."""
        return await self.call(tool, args)

    def execute_stream(self, tool: str, /, **args: Any) -> AsyncChunkStream:
        """Start a streaming tool with keyword arguments; ``async for`` over the result for its chunks."""
        return self.stream(tool, args)

    async def call(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`execute` with arguments as a mapping and per-call options."""
        response = await self.call_raw(tool, args, timeout=timeout, session_id=session_id, metadata=metadata)
        return codec.decode_value(response.data, response.content_type)

    async def call_raw(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Like :meth:`call` but returns the ExecuteToolResponse (data, content_type, metadata)."""
        request = self._request(tool, args, session_id, metadata)
        try:
            return await self._stub.ExecuteTool(request, **self._call_options(timeout))
        except grpc.RpcError as error:
            raise _translate(error, streaming=False, timeout=self._timeout(timeout)) from None

    def stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncChunkStream:
        """:meth:`execute_stream` with arguments as a mapping and per-call options."""
        request = self._request(tool, args, session_id, metadata)
        return AsyncChunkStream(self._batched(request, **self._call_options(timeout)), self._timeout(timeout))

    # -- worker and sessions --------------------------------------------------------------------------------
    async def ping(self, message: str = "", *, timeout: float = 5.0) -> Any:
        """The worker's PingResponse (worker_id, adapter, pid, uptime_ms)."""
        return await self._stub.Ping(pb.PingRequest(message=message), timeout=timeout, metadata=self._auth)

    async def list_tools(self, *, timeout: float = 10.0) -> list[Any]:
        """Every tool of the worker (name, description, supports_streaming, parameter and result schemas)."""
        return list((await self._stub.ListTools(pb.ListToolsRequest(), timeout=timeout, metadata=self._auth)).tools)

    async def initialize_session(self, session_id: str, metadata: Mapping[str, str] | None = None) -> bool:
        request = pb.InitializeSessionRequest(session_id=session_id, metadata=dict(metadata or {}))
        return bool((await self._stub.InitializeSession(request, timeout=10.0, metadata=self._auth)).created)

    async def cleanup_session(self, session_id: str) -> bool:
        request = pb.CleanupSessionRequest(session_id=session_id)
        return bool((await self._stub.CleanupSession(request, timeout=10.0, metadata=self._auth)).existed)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected (raises ``TimeoutError`` after ``timeout``)."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
