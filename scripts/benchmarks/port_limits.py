"""The machine's limits for the local link, measured beside it in the same run (see docs/performance.md).

Minimal Python loops over an Erlang Port with ``{packet, 4}`` framing, nothing of Krait in them but the pipe
size the link sets (``widen_pipe``: 1 MiB instead of Linux's 64 KiB):

- ``echo``: read a frame, ``orjson.loads`` it, ``orjson.dumps`` it back (a round trip's floor);
- ``jsonl``: for each request frame holding a count N, a generator of ``{"i": n}`` written as JSON lines, 1,024
  lines a frame, then an empty frame (the naive stream; one process serves many runs, so it is measured warm);
- ``bytes COUNT MIB``: COUNT frames of MIB raw bytes each (what a pipe moves);
- ``jsonl_in``: the other way: frames of ``{"i": n}`` JSON lines from the Elixir side, each line decoded and
  summed, the sum written back at an empty frame (the naive input stream);
- ``bytes_in``: frames of raw bytes from the Elixir side, counted, the count written back at an empty frame.

The Elixir half (``elixir_client/bench/bench.exs``) opens the Port and drives each mode.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
from collections.abc import Callable

import orjson

_LENGTH = struct.Struct(">I")


def _read_exact(n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(0, n)
        if not chunk:
            sys.exit(0)
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _write(payload: bytes) -> None:
    view = memoryview(_LENGTH.pack(len(payload)) + payload)
    while view:
        view = view[os.write(1, view) :]


def echo() -> None:
    while True:
        (size,) = _LENGTH.unpack(_read_exact(4))
        _write(orjson.dumps(orjson.loads(_read_exact(size))))


def jsonl() -> None:
    while True:
        (size,) = _LENGTH.unpack(_read_exact(4))
        _jsonl_stream(int(_read_exact(size)))


def _jsonl_stream(count: int) -> None:
    lines: list[bytes] = []
    for n in range(count):
        lines.append(orjson.dumps({"i": n}))
        if len(lines) == 1024:
            _write(b"\n".join(lines))
            lines = []
    if lines:
        _write(b"\n".join(lines))
    _write(b"")  # the end


def jsonl_in() -> None:
    _sum_frames(lambda frame: sum(orjson.loads(line)["i"] for line in frame.split(b"\n")))


def bytes_in() -> None:
    _sum_frames(len)


def _sum_frames(measure: Callable[[bytes], int]) -> None:
    """Frames from the Elixir side, each measured; the total written back at an empty frame."""
    total = 0
    while True:
        (size,) = _LENGTH.unpack(_read_exact(4))
        if not size:
            _write(str(total).encode())
            total = 0
            continue
        total += measure(_read_exact(size))


def raw_bytes(count: int, block: bytes) -> None:
    for _ in range(count):
        _write(block)
    _write(b"")


def main(argv: list[str]) -> None:
    # the pipe size Krait's link sets (python_worker.transports.link_io.widen_pipe; not imported, so that this
    # loop stays free of Krait): the limit is what the machine can do
    for fd in (0, 1):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    block = os.urandom(int(argv[2]) << 20) if argv[0] == "bytes" else b""
    (size,) = _LENGTH.unpack(_read_exact(4))  # a first frame says go: the Elixir side is ready to measure
    _read_exact(size)
    if argv[0] == "echo":
        echo()
    elif argv[0] == "jsonl":
        jsonl()
    elif argv[0] == "bytes":
        raw_bytes(int(argv[1]), block)
    elif argv[0] == "jsonl_in":
        jsonl_in()
    elif argv[0] == "bytes_in":
        bytes_in()
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
