"""A link worker's own CPU time per unary call and per small streamed chunk, beside a naive Python loop.

Drives a real ``serve --link`` worker over its stdin/stdout as an Elixir pool does (``docs/link.md``: OPEN with
the call's deadline, credit and ``krait-call-id``; STARTED, MESSAGE, END back), with the bench adapter the Elixir
bench uses (``add``, ``stream_small``). After a warm-up it runs rounds of N unary ``add`` calls one at a time
(each awaited to its END) and one ``stream_small`` of M items, reading the worker's utime+stime from
``/proc/PID/stat`` before and after each. Beside them, in the same rounds, the floor: a Python loop doing orjson
loads + dumps per call, and orjson dumps + join per chunk (this process's thread CPU time). Figures are medians
over the rounds: CPU time, not wall time, so the machine's other load moves them little.

    .venv/bin/python -m scripts.benchmarks.worker_cpu [--calls N] [--items M] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from python_worker.proto import link_pb, pb  # noqa: E402

ADAPTER = "adapters.showcase:ShowcaseAdapter"
Kind = link_pb.LinkFrame.Kind
_LENGTH = struct.Struct(">I")
_TICK = os.sysconf("SC_CLK_TCK")
WINDOW = 4 << 20  # the credit an Elixir pool gives each call (Krait.Link.Calls)
TIMEOUT_MS = 30_000  # Krait.execute's default deadline travels with every call


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads, exited ones too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class LinkWorker:
    """A ``serve --link`` worker and a blocking reader of its frames (LOG frames skipped)."""

    def __init__(self, root: Path = ROOT, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "python_worker", "serve", "--adapter", ADAPTER, "--link", "--worker-id", "cpu"]
        self.process = subprocess.Popen(
            [*cmd, *args],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        self._next_id = 0
        ready = self.read()
        assert ready.kind == Kind.READY, ready

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self) -> Any:
        while True:
            head = self._out.read(4)
            if len(head) < 4:
                raise RuntimeError("the worker closed its link")
            frame = link_pb.LinkFrame.FromString(self._out.read(_LENGTH.unpack(head)[0]))
            if frame.kind != Kind.LOG:
                return frame

    def open(self, method: str, tool: str, args: dict[str, Any]) -> int:
        self._next_id += 1
        request = pb.ExecuteToolRequest(tool_name=tool, args_json=json.dumps(args)).SerializeToString()
        frame = link_pb.LinkFrame(
            call_id=self._next_id,
            kind=Kind.OPEN,
            method=method,
            payload=request,
            timeout_ms=TIMEOUT_MS,
            credit=WINDOW,
            # the Elixir pool asks for runs of plain JSON chunks as one array per frame (docs/link.md)
            metadata={"krait-call-id": f"bench-{self._next_id}"}
            | ({"krait-json-chunks": "1"} if method == "ExecuteStreamingToolBatched" else {}),
        ).SerializeToString()
        self._in.write(_LENGTH.pack(len(frame)) + frame)
        self._in.flush()
        return self._next_id

    def call(self, tool: str, args: dict[str, Any]) -> bytes:
        """A unary call to its END; returns the result's data."""
        call_id = self.open("ExecuteTool", tool, args)
        data = b""
        while True:
            frame = self.read()
            assert frame.call_id == call_id, frame
            if frame.kind == Kind.MESSAGE:
                data = pb.ExecuteToolResponse.FromString(frame.payload).data
            elif frame.kind == Kind.END:
                assert frame.payload == b"" or frame.payload == b"\x08\x00" or _ok(frame.payload), frame
                return data

    def stream(self, tool: str, args: dict[str, Any]) -> int:
        """A batched stream to its END, giving credit back as an Elixir pool does; returns the chunks."""
        call_id = self.open("ExecuteStreamingToolBatched", tool, args)
        chunks = unacked = 0
        while True:
            frame = self.read()
            assert frame.call_id == call_id, frame
            if frame.kind in (Kind.MESSAGE, Kind.JSON_CHUNKS):
                if frame.kind == Kind.JSON_CHUNKS:
                    chunks += len(orjson.loads(frame.payload))
                else:
                    chunks += len(pb.ToolChunkBatch.FromString(frame.payload).chunks)
                unacked += len(frame.payload)
                if unacked >= WINDOW // 4:
                    credit = link_pb.LinkFrame(call_id=call_id, kind=Kind.CREDIT, credit=unacked).SerializeToString()
                    self._in.write(_LENGTH.pack(len(credit)) + credit)
                    self._in.flush()
                    unacked = 0
            elif frame.kind == Kind.END:
                assert _ok(frame.payload), frame
                return chunks

    def close(self) -> None:
        self._in.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _ok(status: bytes) -> bool:
    from google.rpc import status_pb2

    return bool(status_pb2.Status.FromString(status).code == 0)


def naive_call(n: int) -> float:
    """CPU seconds of ``n`` rounds of the least a call does in Python: its arguments in, its result out."""
    args = b'{"a": 1, "b": 2}'
    started = time.thread_time()
    for _ in range(n):
        value = orjson.loads(args)
        orjson.dumps(value["a"] + value["b"])
    return time.thread_time() - started


def naive_chunks(n: int, batch: int = 4096, *, pooled: bool = False) -> float:
    """CPU seconds of encoding ``n`` ``{"i": i}`` items as JSON lines, joined in batches. ``pooled``: each
    output copied into Python's small-object allocator first (as the worker does: thousands of orjson's own
    outputs held at once cost a page fault each on some machines, which the plain loop then measures)."""
    started = time.thread_time()
    for start in range(0, n, batch):
        if pooled:
            b"\n".join([b"%b" % (orjson.dumps({"i": i}),) for i in range(start, min(n, start + batch))])
        else:
            b"\n".join([orjson.dumps({"i": i}) for i in range(start, min(n, start + batch))])
    return time.thread_time() - started


def _round(worker: LinkWorker, calls: int, items: int) -> tuple[float, float]:
    """Worker CPU µs per unary call and per chunk, over ``calls`` calls and one stream of ``items``."""
    before = cpu_seconds(worker.pid)
    for _ in range(calls):
        worker.call("add", {"a": 1, "b": 2})
    per_call = (cpu_seconds(worker.pid) - before) / calls * 1e6
    before = cpu_seconds(worker.pid)
    assert worker.stream("stream_small", {"count": items}) == items + 1
    return per_call, (cpu_seconds(worker.pid) - before) / items * 1e6


def measure(calls: int, items: int, rounds: int, *, base: Path | None = None, warm: int = 500) -> dict[str, float]:
    """Median worker and naive-loop CPU µs per unary call and per chunk over ``rounds`` interleaved rounds
    (worker, naive loop, and the worker of the checkout ``base`` when given: before/after in one run)."""
    workers = {"worker": LinkWorker()}
    try:
        if base is not None:
            workers["base"] = LinkWorker(base)
        for worker in workers.values():
            for _ in range(warm):
                assert worker.call("add", {"a": 1, "b": 2}) == b"3.0"
            worker.stream("stream_small", {"count": min(items, 20_000)})
        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, worker in workers.items():
                per_call, per_chunk = _round(worker, calls, items)
                samples.setdefault(f"{name}_cpu_unary_us", []).append(per_call)
                samples.setdefault(f"{name}_cpu_chunk_us", []).append(per_chunk)
            samples.setdefault("naive_cpu_unary_us", []).append(naive_call(calls) / calls * 1e6)
            samples.setdefault("naive_cpu_chunk_us", []).append(naive_chunks(items) / items * 1e6)
            samples.setdefault("naive_pooled_cpu_chunk_us", []).append(naive_chunks(items, pooled=True) / items * 1e6)
    finally:
        for worker in workers.values():
            worker.close()
    out: dict[str, float] = {"worker_cpu_rounds": rounds}
    for key, values in samples.items():
        out[key] = statistics.median(values)
        out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    return out


QUICK = {"calls": 1000, "items": 30_000, "rounds": 1, "warm": 200}
FULL = {"calls": 5000, "items": 500_000, "rounds": 5, "warm": 2000}


def benchmark(quick: bool, runs: int) -> dict[str, float]:
    """scripts/bench's figures: :func:`measure` at the quick (a few seconds) or full sizes, ``runs`` rounds."""
    sizes = QUICK if quick else FULL
    return measure(sizes["calls"], sizes["items"], 1 if quick else runs, warm=sizes["warm"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK}")
    parser.add_argument("--calls", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--base", type=Path, help="also run the worker of this checkout, interleaved (A/B)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ns = parser.parse_args()
    sizes = QUICK if ns.quick else FULL
    calls, items, rounds = ns.calls or sizes["calls"], ns.items or sizes["items"], ns.rounds or sizes["rounds"]
    result = measure(calls, items, rounds, base=ns.base, warm=sizes["warm"])
    if ns.json:
        print(json.dumps(result))
        return 0
    print(f"CPU µs, median of {rounds} rounds of {calls} unary add calls and a {items}-item stream_small (min-max)")
    for name in ("worker", "base", "naive"):
        if f"{name}_cpu_unary_us" in result:
            print(
                f"  {name:<7} per unary call {_figure(result, f'{name}_cpu_unary_us')}"
                f"   per small chunk {_figure(result, f'{name}_cpu_chunk_us')}"
            )
    print(f"  naive per small chunk, each output copied first {_figure(result, 'naive_pooled_cpu_chunk_us')}")
    return 0


def _figure(result: dict[str, float], key: str) -> str:
    return f"{result[key]:7.2f} ({result[key + '_min']:.2f}-{result[key + '_max']:.2f})"


if __name__ == "__main__":
    sys.exit(main())
