"""The baseline: a plain grpcio server and client with no Krait code, one gRPC message per item.

Methods use bytes in and out (generic handlers, no protobuf), which is the cheapest grpcio can do:
- ``/bench.Raw/Items``  request ``b"N"``: streams N messages, each ``orjson.dumps({"i": n})``
- ``/bench.Raw/Blobs``  request ``b"N,SIZE"``: streams N messages of SIZE bytes (float32 data)
- ``/bench.Raw/Echo``   unary: returns the request

Run as a process: ``python -m scripts.benchmarks.raw_grpc`` prints its port and serves until stdin closes.
``python -m scripts.benchmarks.raw_grpc latency HOST:PORT CALLS`` instead times CALLS warm unary ``add`` calls to
a Krait worker with grpcio's own client (the baseline the Elixir pool's latency is compared to, on the same
worker) and prints ``{"p50": us, "p99": us}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent import futures

import grpc
import numpy as np
import orjson

OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _items(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for n in range(int(request)):
        yield orjson.dumps({"i": n})


def _blobs(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, size = (int(x) for x in request.split(b","))
    block = np.random.default_rng(0).standard_normal(size // 4, dtype=np.float32).tobytes()
    for _ in range(count):
        yield block


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def serve() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    handlers = {
        "Items": grpc.unary_stream_rpc_method_handler(_items),
        "Blobs": grpc.unary_stream_rpc_method_handler(_blobs),
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Raw", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(0)


class RawClient:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=OPTIONS)
        self.items = self.channel.unary_stream("/bench.Raw/Items")
        self.blobs = self.channel.unary_stream("/bench.Raw/Blobs")
        self.echo = self.channel.unary_unary("/bench.Raw/Echo")

    def count_items(self, n: int) -> int:
        count = 0
        for message in self.items(str(n).encode(), timeout=600):
            orjson.loads(message)
            count += 1
        return count

    def blob_bytes(self, count: int, size: int) -> int:
        return sum(len(m) for m in self.blobs(f"{count},{size}".encode(), timeout=600))

    def close(self) -> None:
        self.channel.close()


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``th percentile, interpolated linearly between the closest ranks (NumPy's default)."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), p))


def worker_latency(target: str, calls: int, warmup: int = 200) -> list[float]:
    """Microseconds of ``calls`` warm ExecuteTool(add) calls to a Krait worker, through a plain grpcio stub (with
    the token in ``$KRAIT_TOKEN``, as every call to a listening worker carries one)."""
    from python_worker.proto import pb, pb_grpc

    auth = (("authorization", f"Bearer {os.environ['KRAIT_TOKEN']}"),) if os.environ.get("KRAIT_TOKEN") else ()
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        stub = pb_grpc.ToolWorkerStub(channel)
        request = pb.ExecuteToolRequest(tool_name="add", args_json='{"a": 1, "b": 2}')
        for _ in range(warmup):
            stub.ExecuteTool(request, timeout=10, metadata=auth)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.ExecuteTool(request, timeout=10, metadata=auth)
            samples.append((time.perf_counter() - started) * 1e6)
    return samples


if __name__ == "__main__":
    if sys.argv[1:2] == ["latency"]:
        us = worker_latency(sys.argv[2], int(sys.argv[3]))
        print(json.dumps({"p50": percentile(us, 50), "p99": percentile(us, 99)}))
    else:
        serve()
