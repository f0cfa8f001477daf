"""A ``serve --link`` worker driven from a test as an Elixir pool drives it (docs/link.md): length-prefixed
``LinkFrame``s on its stdin and stdout, the worker's frames read by a thread of their own (LOG frames dropped)."""

from __future__ import annotations

import json
import os
import queue
import struct
import subprocess
import sys
import threading
from typing import Any

from python_worker import BaseAdapter
from python_worker.engine import Engine
from python_worker.engine.sessions import SessionStore
from python_worker.proto import link_pb, pb
from python_worker.transports.link import LinkServer
from python_worker.transports.link_io import FrameReader, FrameWriter

from .workers import ROOT

Kind = link_pb.LinkFrame.Kind


class LinkProcess:
    """The worker process and its frames; :meth:`close` ends it (its stdin's end), always."""

    def __init__(self, adapter: str, worker_id: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "python_worker", "serve", "--adapter", adapter, "--link"]
        self.process = subprocess.Popen(
            [*cmd, "--worker-id", worker_id, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.frames: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.frames.get(timeout=30)
        assert ready.kind == Kind.READY

    def _read(self) -> None:
        assert self.process.stdout is not None
        while (head := self.process.stdout.read(4)) and len(head) == 4:
            (size,) = struct.unpack(">I", head)
            frame = link_pb.LinkFrame.FromString(self.process.stdout.read(size))
            if frame.kind != Kind.LOG:
                self.frames.put(frame)

    def send(self, **fields: Any) -> None:
        data = link_pb.LinkFrame(**fields).SerializeToString()
        assert self.process.stdin is not None
        self.process.stdin.write(struct.pack(">I", len(data)) + data)
        self.process.stdin.flush()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the link's end: the worker exits
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class InProcessLink:
    """A ``LinkServer`` serving ``adapter`` in this process over two pipes, driven as an Elixir pool drives a
    worker; its frames (LOG frames dropped) in :attr:`frames`. Lets a test reach the server's internals."""

    def __init__(self, adapter: BaseAdapter, *, max_message_bytes: int = 4 << 20) -> None:
        to_worker, self._to_worker = os.pipe()
        self._from_worker, from_pool = os.pipe()
        engine = Engine(
            adapter,
            adapter_path=f"tests:{type(adapter).__name__}",
            worker_id="w",
            sessions=SessionStore(ttl=60),
            max_calls=4,
            max_message_bytes=max_message_bytes,
        )
        self.server = LinkServer(engine, FrameReader(to_worker), FrameWriter(from_pool), threads=3)
        self.frames: queue.Queue[Any] = queue.Queue()
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.server.start()

    def _read(self) -> None:
        with os.fdopen(self._from_worker, "rb") as pipe:
            while len(head := pipe.read(4)) == 4:
                frame = link_pb.LinkFrame.FromString(pipe.read(struct.unpack(">I", head)[0]))
                if frame.kind != Kind.LOG:
                    self.frames.put(frame)

    def open(self, frame: link_pb.LinkFrame) -> int:
        """Sends ``frame`` as the next call's OPEN; returns its call id."""
        self._next += 1
        frame.call_id = self._next
        self.send(frame)
        return self._next

    def send(self, frame: link_pb.LinkFrame) -> None:
        """Sends ``frame`` as it is (a call's CANCEL, credit, input or handler reply)."""
        data = frame.SerializeToString()
        os.write(self._to_worker, struct.pack(">I", len(data)) + data)

    def call(self, tool_name: str, *, timeout_ms: int = 30_000, wait_s: float = 10, **args: Any) -> list[Any]:
        """A unary call's frames, STARTED to END (each awaited at most ``wait_s`` seconds)."""
        request = pb.ExecuteToolRequest(tool_name=tool_name, args_json=json.dumps(args))
        call_id = self.open(
            link_pb.LinkFrame(
                kind=Kind.OPEN,
                method="ExecuteTool",
                payload=request.SerializeToString(),
                timeout_ms=timeout_ms,
                credit=1 << 20,
            )
        )
        frames = [self.frames.get(timeout=wait_s)]
        while frames[-1].kind != Kind.END:
            frames.append(self.frames.get(timeout=wait_s))
        assert {f.call_id for f in frames} == {call_id}
        return frames

    def close(self) -> None:
        os.close(self._to_worker)  # the pool's end: the server's reader sees EOF
        assert self.server.closed.wait(10)
