"""MCP over stdin/stdout (``serve --mcp``): how an agent host launches a local tool server.

stdout is the protocol: :func:`claim_stdio` takes the process's stdin and stdout for it before anything else
runs, and points descriptors 0 and 1 at ``/dev/null`` and stderr, so nothing a tool, the adapter or a library
prints can corrupt a message; the worker's logs go to stderr as always, and no ``KRAIT_READY`` line is printed.
Like the local link, the pipe belongs to the host that started the worker: it needs no token (a token guards TCP
ports, which any local user can reach). The host closing stdin ends the worker; its calls are cancelled.

The framing is read here rather than by ``mcp.server.stdio``, for the limits every front has: a line longer than
the worker's maximum message size is skipped unread and answered ``-32600`` (``Invalid Request``) instead of
being buffered whole; a line that is not JSON is answered ``-32700`` (``Parse error``), one that is JSON but not
a JSON-RPC message ``-32600``, both naming the problem (the package's own reader drops them silently). Writes go
through an asyncio pipe transport: a host that stops reading pauses the writer, and with it the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import mcp_types as types
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from ...engine import Engine
from .calls import Calls, Live
from .server import build_server

log = logging.getLogger("krait.worker")

READ_BYTES = 1 << 16


def claim_stdio() -> tuple[int, int]:
    """Take stdin and stdout for MCP: returns private descriptors of both, and leaves 0 reading ``/dev/null`` and
    1 writing to stderr. Call it before anything can print."""
    private_in = os.dup(0)
    private_out = os.dup(1)
    for fd in (private_in, private_out):
        os.set_inheritable(fd, False)  # tools' subprocesses never inherit the protocol's pipes
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return private_in, private_out


def _error(message_id: Any, code: int, message: str) -> SessionMessage:
    return SessionMessage(
        types.JSONRPCError(jsonrpc="2.0", id=message_id, error=types.ErrorData(code=code, message=message))
    )


def parse_line(line: bytes) -> SessionMessage | tuple[Any, int, str]:
    """A JSON-RPC message, or the error answering the line: ``(id, code, message)``."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError:
        pass
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return None, types.PARSE_ERROR, f"Parse error: the line is not valid JSON ({exc})"
    message_id = value.get("id") if isinstance(value, dict) else None
    if not isinstance(message_id, str | int) or isinstance(message_id, bool):
        message_id = None
    return message_id, types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 request, notification or response"


class McpStdio:
    """The MCP server on the claimed stdin/stdout, on a thread with its own event loop."""

    def __init__(self, engine: Engine, fds: tuple[int, int], *, max_message_bytes: int) -> None:
        self.engine = engine
        self.in_fd, self.out_fd = fds
        self.max_line = max_message_bytes
        self.live = Live()
        self.executor = ThreadPoolExecutor(max_workers=engine.max_calls + 4, thread_name_prefix="mcp")
        # stdio is one connection, one client: one Krait session for the connection's life
        session = f"mcp:stdio:{uuid.uuid4().hex}"
        self.calls = Calls(
            engine,
            self.executor,
            track=self.live.track,
            session_of=lambda ctx: session,
            metadata_of=lambda ctx: {},
            is_stopping=lambda: self.live.stopping,
        )
        self.server = build_server(engine, self.calls)
        self.closed = threading.Event()  # the host has gone (stdin closed or stdout broken), or stop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="mcp-stdio", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float, wait: float) -> None:
        """Refuse new calls; calls in flight get ``grace`` seconds, then are cancelled; wait at most ``wait``."""
        end = time.monotonic() + wait
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            deadline = time.monotonic() + min(grace, wait)
            loop.call_soon_threadsafe(setattr, self.live, "stopping", True)
            while len(self.live) and time.monotonic() < deadline:
                time.sleep(0.01)
            loop.call_soon_threadsafe(self.live.cancel_all)
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))  # their answers go out before the loop ends
            if self._task is not None:
                loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(max(0.0, end - time.monotonic()))
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            log.error("the MCP server failed: %s", exc)
        finally:
            self.closed.set()

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
        errors = write_send.clone()  # the reader's answers to lines that are not messages
        writer = await self._writer()
        with contextlib.suppress(asyncio.CancelledError):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write_all, write_receive, writer, tg.cancel_scope)
                reader = threading.Thread(
                    target=self._read_all, args=(read_send, errors, self._loop), name="mcp-stdin", daemon=True
                )
                reader.start()
                await self.server.run(read_receive, write_send, self.server.create_initialization_options())
                log.info("MCP: stdin closed: the host has gone")
                await errors.aclose()

    async def _writer(self) -> asyncio.StreamWriter | None:
        """A non-blocking writer of the claimed stdout; None when it is not a pipe (a file: written directly)."""
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self.out_fd, "wb", buffering=0, closefd=False)
        try:
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
        except ValueError:
            return None
        return asyncio.StreamWriter(transport, protocol, None, loop)

    async def _write_all(
        self, messages: MemoryObjectReceiveStream[SessionMessage], writer: asyncio.StreamWriter | None, scope: Any
    ) -> None:
        try:
            async with messages:
                async for message in messages:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
                    if writer is None:
                        os.write(self.out_fd, data)
                    else:
                        writer.write(data)
                        await writer.drain()
        except OSError as exc:  # the host closed our stdout: it has gone, its calls are cancelled
            log.info("MCP: stdout closed (%s): the host has gone", exc)
            scope.cancel()

    def _read_all(
        self,
        messages: MemoryObjectSendStream[SessionMessage | Exception],
        errors: MemoryObjectSendStream[SessionMessage],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Lines from stdin until it closes (a thread: a blocking read costs the event loop nothing)."""

        def deliver(stream: Any, item: Any) -> bool:
            try:
                asyncio.run_coroutine_threadsafe(stream.send(item), loop).result()
            except Exception:  # the server has ended
                return False
            return True

        buffer = bytearray()
        skipping = False  # inside a line over the limit: dropped up to its newline
        try:
            while chunk := os.read(self.in_fd, READ_BYTES):
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    line, start = bytes(buffer[start:end]).strip(), end + 1
                    if skipping:
                        skipping = False
                        continue
                    if len(line) > self.max_line:
                        line = b""
                        if not self._too_large(errors, deliver):
                            return
                    if not line:
                        continue
                    parsed = parse_line(line)
                    if isinstance(parsed, tuple):
                        log.warning("MCP: refused a line from stdin: %s", parsed[2])
                        if not deliver(errors, _error(*parsed)):
                            return
                    elif not deliver(messages, parsed):
                        return
                del buffer[:start]
                if not skipping and len(buffer) > self.max_line:
                    buffer.clear()
                    skipping = True
                    if not self._too_large(errors, deliver):
                        return
                elif skipping:
                    buffer.clear()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(messages.aclose(), loop).result(5)

    def _too_large(self, errors: MemoryObjectSendStream[SessionMessage], deliver: Any) -> bool:
        message = f"Invalid Request: a message of more than {self.max_line} bytes (see --max-message-mb)"
        log.warning("MCP: refused a line from stdin: %s", message)
        return bool(deliver(errors, _error(None, types.INVALID_REQUEST, message)))
