"""A ``serve --link`` worker driven from a test as an Elixir pool drives it (docs/link.md): length-prefixed
``LinkFrame``s on its stdin and stdout, the worker's frames read by a thread of their own (LOG frames dropped)."""

from __future__ import annotations

import queue
import struct
import subprocess
import sys
import threading
from typing import Any

from python_worker.proto import link_pb

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
