"""Runs Krait's benchmarks beside a plain grpcio baseline and prints a table of ratios.

Absolute numbers are noisy on small shared machines; ratios measured in one run, on one machine, are what we
compare. Each figure is the median of ``--runs`` repetitions. Results go to ``.bench/results.json``.
The Elixir half runs ``elixir_client/bench/bench.exs`` and reads its ``BENCH {json}`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from python_worker.client import Client  # noqa: E402
from python_worker.proto import pb, pb_grpc  # noqa: E402
from scripts.benchmarks.raw_grpc import RawClient  # noqa: E402
from tests.workers import running_worker  # noqa: E402

MiB = 1 << 20


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def rate(count: float, fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


class RawServer:
    def __enter__(self) -> RawServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.benchmarks.raw_grpc"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.target = f"127.0.0.1:{int(self.process.stdout.readline())}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def python_benchmarks(cfg: dict[str, Any], runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    items, blobs, blob_size = cfg["items"], cfg["blobs"], cfg["blob_mb"] * MiB
    with RawServer() as raw_server, running_worker("adapters.showcase:ShowcaseAdapter") as worker:
        raw = RawClient(raw_server.target)
        client = Client(worker.target, timeout=600)
        proc = psutil.Process(worker.process.pid)

        def krait_items() -> None:
            n = sum(1 for _ in client.execute_stream("stream_small", count=items))
            assert n == items + 1

        out["raw_items_per_s"] = median_of(runs, lambda: rate(items, lambda: raw.count_items(items)))
        out["py_items_per_s"] = median_of(runs, lambda: rate(items, krait_items))

        def krait_blobs() -> None:
            rows = blob_size // (1024 * 4)
            total = 0
            for chunk in client.execute_stream("stream_arrays", batches=blobs, batch_rows=rows, cols=1024):
                if not chunk.is_final:
                    total += chunk.data.nbytes
            assert total == blobs * blob_size

        out["raw_bytes_per_s"] = median_of(runs, lambda: rate(blobs * blob_size, lambda: raw.blob_bytes(blobs, blob_size)))
        out["py_bytes_per_s"] = median_of(runs, lambda: rate(blobs * blob_size, krait_blobs))

        # the same float32 data as JSON lists (tolist): 64 rows x 1024 per chunk, rate in float32-equivalent bytes
        json_batches, json_rows = cfg["json_batches"], 64
        out["py_json_bytes_per_s"] = rate(
            json_batches * json_rows * 1024 * 4,
            lambda: sum(
                1 for _ in client.execute_stream(
                    "stream_arrays", batches=json_batches, batch_rows=json_rows, cols=1024, as_json=True
                )
            ),
        )

        # unary latency of a raw grpcio call to the same worker (the Elixir pool's latency is compared to it)
        stub = pb_grpc.ToolWorkerStub(client._channel)  # noqa: SLF001
        request = pb.ExecuteToolRequest(tool_name="add", args_json='{"a": 1, "b": 2}')
        for _ in range(200):
            stub.ExecuteTool(request, timeout=10)
        samples = []
        for _ in range(cfg["latency_calls"]):
            started = time.perf_counter()
            stub.ExecuteTool(request, timeout=10)
            samples.append((time.perf_counter() - started) * 1e6)
        samples.sort()
        out["raw_unary_p50_us"] = samples[len(samples) // 2]
        out["raw_unary_p99_us"] = samples[int(len(samples) * 0.99)]
        out["py_worker_rss_mb"] = proc.memory_info().rss / MiB
        client.close()
        raw.close()
    return out


def elixir_benchmarks(cfg: dict[str, Any]) -> dict[str, float]:
    script = ROOT / "elixir_client/bench/bench.exs"
    if not script.exists():
        return {}
    env = {**os.environ, "KRAIT_BENCH": json.dumps(cfg), "MIX_ENV": "bench" if False else "dev"}
    result = subprocess.run(
        ["mix", "run", "bench/bench.exs"], cwd=ROOT / "elixir_client", env=env, capture_output=True, text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], file=sys.stderr)
        raise SystemExit("the Elixir benchmarks failed")
    out: dict[str, float] = {}
    for line in result.stdout.splitlines():
        if line.startswith("BENCH "):
            out.update(json.loads(line.removeprefix("BENCH ")))
    return out


def table(r: dict[str, float]) -> list[tuple[str, str, str, str]]:
    rows = []

    def row(name: str, value: str, ratio: str = "", target: str = "") -> None:
        rows.append((name, value, ratio, target))

    def get(key: str) -> float | None:
        return r.get(key)

    def per_s(v: float | None, unit: str = "/s") -> str:
        return "n/a" if v is None else f"{v:,.0f}{unit}"

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or b is None else f"{a / b:.2f}x"

    row("1. small chunks, plain grpcio (1 msg/item)", per_s(get("raw_items_per_s")), "1.00x", "baseline")
    row("1. small chunks into an Elixir callback", per_s(get("ex_items_per_s")),
        ratio(get("ex_items_per_s"), get("raw_items_per_s")), ">= 100,000/s and >= 10x")
    row("2. small chunks into the Python client", per_s(get("py_items_per_s")),
        ratio(get("py_items_per_s"), get("raw_items_per_s")), ">= 100,000/s")
    mb = 1 / MiB
    raw_b = get("raw_bytes_per_s")
    row("3. large float32 batches, plain grpcio", per_s(raw_b and raw_b * mb, " MiB/s"), "1.00x", "baseline")
    row("3. large batches into Elixir", per_s(get("ex_bytes_per_s") and get("ex_bytes_per_s") * mb, " MiB/s"),
        ratio(get("ex_bytes_per_s"), raw_b), ">= 0.70x")
    row("3. large batches into Python", per_s(get("py_bytes_per_s") and get("py_bytes_per_s") * mb, " MiB/s"),
        ratio(get("py_bytes_per_s"), raw_b), ">= 0.70x")
    row("3. the same as JSON tolist(), into Python",
        per_s(get("py_json_bytes_per_s") and get("py_json_bytes_per_s") * mb, " MiB/s"),
        ratio(get("py_bytes_per_s"), get("py_json_bytes_per_s")) + " npy/json", "")
    for q in ("p50", "p99"):
        ex, rawq = get(f"ex_unary_{q}_us"), get(f"raw_unary_{q}_us")
        over = "n/a" if ex is None or rawq is None else f"+{ex - rawq:.0f} µs"
        row(f"4. unary latency {q}: Elixir pool vs raw grpcio",
            "n/a" if ex is None else f"{ex:.0f} µs vs {rawq:.0f} µs", over, "<= +150 µs at p50" if q == "p50" else "")
    for n in (1, 4, 8):
        v = get(f"ex_pool_start_{n}_ms")
        row(f"5. pool start, {n} worker(s) ready", "n/a" if v is None else f"{v:.0f} ms",
            ratio(v, get("ex_pool_start_1_ms")), "8: ~ 8 x CPU time / cores")
    row("5. one worker's start CPU time", "n/a" if get("ex_worker_cpu_ms") is None else f"{get('ex_worker_cpu_ms'):.0f} ms")
    row("6. 200 streams over a pool of 4: p99 first chunk",
        "n/a" if get("ex_concurrency_p99_first_ms") is None else f"{get('ex_concurrency_p99_first_ms'):.0f} ms",
        "" if get("ex_concurrency_ok") is None else ("no loss, in order" if get("ex_concurrency_ok") else "LOST/REORDERED"))
    row("7. cancellation: caller death -> finally, p99",
        "n/a" if get("ex_cancel_p99_ms") is None else f"{get('ex_cancel_p99_ms'):.1f} ms", "", "<= 50 ms")
    row("8. slow consumer (10x): peak RSS worker / BEAM",
        "n/a" if get("ex_slow_worker_rss_mb") is None
        else f"{get('ex_slow_worker_rss_mb'):.0f} MiB / {get('ex_slow_beam_rss_mb'):.0f} MiB", "", "bounded")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: proves the benchmarks work")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python-only", action="store_true")
    ns = parser.parse_args()
    if ns.quick:
        cfg = {"items": 20_000, "blobs": 8, "blob_mb": 4, "json_batches": 2, "latency_calls": 300, "runs": 1,
               "concurrent_streams": 40, "stream_items": 200, "cancel_samples": 5, "quick": True}
        runs = 1
    else:
        cfg = {"items": 200_000, "blobs": 256, "blob_mb": 4, "json_batches": 8, "latency_calls": 3000,
               "runs": ns.runs, "concurrent_streams": 200, "stream_items": 1000, "cancel_samples": 50, "quick": False}
        runs = ns.runs
    results = python_benchmarks(cfg, runs)
    if not ns.python_only:
        results.update(elixir_benchmarks(cfg))
    rows = table(results)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"\nKrait benchmarks ({'quick' if ns.quick else f'median of {runs} runs'}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})")
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"config": cfg, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
