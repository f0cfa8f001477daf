"""Runs Krait's benchmarks beside a plain grpcio baseline and prints a table of ratios.

Absolute numbers are noisy on small shared machines; ratios measured in one run, on one machine, are what we
compare. Each figure is the median of ``--runs`` repetitions (baseline and Krait alternate, so drift hits both).
The Elixir half runs ``elixir_client/bench/bench.exs`` and reads its ``BENCH {json}`` lines. Results go to
``.bench/results.json`` and, as a Markdown table with the machine and the command, ``.bench/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import psutil
from grpc_reflection.v1alpha import reflection_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from python_worker.client import Client  # noqa: E402
from python_worker.transports.grpc.aux_streams import MAX_AUX_STREAMS  # noqa: E402
from python_worker.transports.grpc.security import client_metadata  # noqa: E402
from python_worker.transports.security import TOKEN_ENV, generate_token  # noqa: E402
from scripts.benchmarks import hostile, mcp_bench, observability, worker_cpu  # noqa: E402
from scripts.benchmarks.raw_grpc import RawClient  # noqa: E402
from tests.workers import running_worker  # noqa: E402

MiB = 1 << 20
COLS = 1024

QUICK = {
    "items": 20_000,
    "blobs": 8,
    "blob_mb": 4,
    "json_batches": 2,
    "latency_calls": 300,
    "concurrent_streams": 40,
    "stream_items": 200,
    "cancel_samples": 5,
    "slow_chunks": 24,
    "pool_sizes": [1, 4, 8],
    "ping_samples": 50,
    "storm_streams": 100,
    "soak_s": 1,
}
FULL = {
    "items": 200_000,
    "blobs": 256,
    "blob_mb": 4,
    "json_batches": 8,
    "latency_calls": 3000,
    "concurrent_streams": 200,
    "stream_items": 1000,
    "cancel_samples": 50,
    "slow_chunks": 256,
    "pool_sizes": [1, 4, 8],
    "ping_samples": 500,
    "storm_streams": 1000,
    "soak_s": 60,
}
IDLE_STREAMS = 200


CORES = os.cpu_count() or 1


def rate(count: float, fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


def paired(runs: int, baseline: Callable[[], float], krait: Callable[[], float]) -> tuple[float, float]:
    """Medians of ``runs`` alternating measurements of the baseline and of Krait, after one unmeasured run of
    each (a new connection's flow-control windows start small and grow)."""
    baseline()
    krait()
    a, b = [], []
    for _ in range(runs):
        a.append(baseline())
        b.append(krait())
    return statistics.median(a), statistics.median(b)


class RawServer:
    """The plain grpcio server of ``raw_grpc.py``, in its own process like a Krait worker."""

    def __enter__(self) -> RawServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.benchmarks.raw_grpc"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.target = f"127.0.0.1:{int(self.process.stdout.readline())}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


class CpuHog:
    """``--busy``: a CPU-bound process (``while True: pass``, not pinned) holding one of the cores for the whole
    run, the way a CI runner or a production host with a busy neighbour looks. Killed by its pid on every way
    out of the ``with``; if this process is killed outright, the kernel kills it too (``PR_SET_PDEATHSIG``)."""

    def __enter__(self) -> CpuHog:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        return self

    def cpu_share(self) -> float:
        """The fraction of a core the hog has had so far: proof it ran."""
        times = psutil.Process(self.process.pid).cpu_times()
        return (times.user + times.system) / (time.monotonic() - self.started)

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait(10)


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1  # linux/prctl.h
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def python_benchmarks(cfg: dict[str, Any], runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    items, blobs, blob_size = cfg["items"], cfg["blobs"], cfg["blob_mb"] * MiB
    with RawServer() as raw_server, running_worker("adapters.showcase:ShowcaseAdapter") as worker:
        raw = RawClient(raw_server.target)
        client = Client(worker.target, timeout=600)

        def krait_items() -> None:
            n = sum(1 for _ in client.execute_stream("stream_small", count=items))
            assert n == items + 1

        out["raw_items_per_s"], out["py_items_per_s"] = paired(
            runs, lambda: rate(items, lambda: raw.count_items(items)), lambda: rate(items, krait_items)
        )

        def krait_blobs() -> None:
            total = 0
            for chunk in client.execute_stream(
                "stream_arrays", batches=blobs, batch_rows=blob_size // (COLS * 4), cols=COLS
            ):
                if not chunk.is_final:
                    total += chunk.data.nbytes
            assert total == blobs * blob_size

        total = blobs * blob_size
        out["raw_bytes_per_s"], out["py_bytes_per_s"] = paired(
            runs, lambda: rate(total, lambda: raw.blob_bytes(blobs, blob_size)), lambda: rate(total, krait_blobs)
        )

        # the same float32 data as JSON lists (tolist): 64 rows per chunk, rate in float32-equivalent bytes
        json_batches, json_rows = cfg["json_batches"], 64
        out["py_json_bytes_per_s"] = rate(
            json_batches * json_rows * COLS * 4,
            lambda: sum(
                1
                for _ in client.execute_stream(
                    "stream_arrays", batches=json_batches, batch_rows=json_rows, cols=COLS, as_json=True
                )
            ),
        )
        out["py_worker_rss_mb"] = psutil.Process(worker.process.pid).memory_info().rss / MiB
        out.update(ping_beside_idle_streams(worker.target, client, cfg["ping_samples"]))
        client.close()
        raw.close()
    return out


class _IdleRequests:
    """A reflection request stream that sends nothing until released: an idle client."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __iter__(self) -> _IdleRequests:
        return self

    def __next__(self) -> Any:
        self.release.wait(600)
        raise StopIteration


def ping_beside_idle_streams(target: str, client: Client, samples: int) -> dict[str, float]:
    """Ping latency while one client holds IDLE_STREAMS idle reflection streams open (the worker serves a few
    and refuses the rest: Ping must not wait behind them)."""
    idle = _IdleRequests()
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        auth = client_metadata(client.token)
        streams = [stub.ServerReflectionInfo(idle, timeout=600, metadata=auth) for _ in range(IDLE_STREAMS)]
        deadline = time.monotonic() + 30
        while sum(s.done() for s in streams) < IDLE_STREAMS - MAX_AUX_STREAMS and time.monotonic() < deadline:
            time.sleep(0.01)
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            client.ping(timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
        for s in streams:
            s.cancel()
        idle.release.set()
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"py_ping_idle_streams_p50_ms": float(p50), "py_ping_idle_streams_p99_ms": float(p99)}


def elixir_benchmarks(cfg: dict[str, Any]) -> dict[str, float]:
    """The Elixir half: bench.exs, then remote.exs (TLS and cross-node)."""
    env = {**os.environ, "KRAIT_BENCH": json.dumps(cfg)}
    out: dict[str, float] = {}
    for script in ("bench/bench.exs", "bench/remote.exs"):
        result = subprocess.run(
            ["mix", "run", script],
            cwd=ROOT / "elixir_client",
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=3600,
        )
        for line in result.stdout.splitlines():
            if line.startswith("BENCH "):
                out.update(_flatten(json.loads(line.removeprefix("BENCH "))))
        if result.returncode != 0:
            print(result.stdout[-4000:], file=sys.stderr)
            raise SystemExit(f"the Elixir benchmarks failed ({script})")
    return out


def _flatten(report: dict[str, Any]) -> dict[str, float]:
    """``{"name": n, "a": 1}`` (remote.exs) becomes ``{"n_a": 1}``; plain reports (bench.exs) stay as they are."""
    name = report.pop("name", None)
    return report if name is None else {f"{name}_{key}": value for key, value in report.items()}


def table(r: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """Rows of (benchmark, value, ratio, target); a missing figure shows as n/a."""
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: str, ratio: str = "", target: str = "") -> None:
        rows.append((name, value, ratio, target))

    def get(key: str) -> float | None:
        return r.get(key)

    def num(v: float | None, fmt: str, unit: str = "") -> str:
        return "n/a" if v is None else f"{v:{fmt}}{unit}"

    def mib(key: str) -> str:
        v = get(key)
        return num(None if v is None else v / MiB, ",.0f", " MiB/s")

    def ratio(a: float | None, b: float | None, suffix: str = "x") -> str:
        return "n/a" if a is None or not b else f"{a / b:.2f}{suffix}"

    def spread(key: str, fmt: str, unit: str) -> str:
        """The limit's min-max across the rounds it was interleaved with Krait's row."""
        low, high, rounds = get(f"{key}_min"), get(f"{key}_max"), get(f"{key}_rounds")
        if low is None or high is None or rounds is None:
            return "1.00x"
        return f"spread {low:{fmt}}-{high:{fmt}}{unit} over {rounds:.0f} rounds"

    raw_items = get("raw_items_per_s")
    jsonl = get("port_jsonl_items_per_s")
    row("1. small chunks, plain grpcio (1 msg/item)", num(raw_items, ",.0f", "/s"), "1.00x", "baseline")
    row(
        "1. small chunks, naive JSON lines over a Port (limit; warm, interleaved with the link's row)",
        num(jsonl, ",.0f", "/s"),
        spread("port_jsonl_items_per_s", ",.0f", "/s"),
        "the limit",
    )
    row(
        "1. small chunks into an Elixir callback, link",
        num(get("ex_items_per_s"), ",.0f", "/s"),
        ratio(get("ex_items_per_s"), jsonl, "x limit"),
        ">= 1,000,000/s, >= 0.8x limit",
    )
    row(
        "1. small chunks into an Elixir callback, gRPC",
        num(get("ex_grpc_items_per_s"), ",.0f", "/s"),
        ratio(get("ex_grpc_items_per_s"), raw_items),
        ">= 100,000/s, >= 10x grpcio",
    )
    row(
        "2. small chunks into the Python client (gRPC)",
        num(get("py_items_per_s"), ",.0f", "/s"),
        ratio(get("py_items_per_s"), raw_items),
        ">= 100,000/s",
    )
    raw_b = get("raw_bytes_per_s")
    port_b = get("port_bytes_per_s")
    row("3. 4 MiB float32 batches, plain grpcio", mib("raw_bytes_per_s"), "1.00x", "baseline")
    row("3. 4 MiB raw frames through a Port (limit)", mib("port_bytes_per_s"), "1.00x", "the limit")
    row(
        "3. 4 MiB batches (npy) into Elixir, link",
        mib("ex_bytes_per_s"),
        ratio(get("ex_bytes_per_s"), port_b, "x limit"),
        ">= 0.90x limit",
    )
    row(
        "3. 4 MiB batches (npy) into Elixir, gRPC",
        mib("ex_grpc_bytes_per_s"),
        ratio(get("ex_grpc_bytes_per_s"), raw_b),
        ">= 0.70x grpcio",
    )
    row(
        "3. 4 MiB batches (npy) into Python (gRPC)",
        mib("py_bytes_per_s"),
        ratio(get("py_bytes_per_s"), raw_b),
        ">= 0.70x",
    )
    row(
        "3. the same as JSON tolist(), into Elixir",
        mib("ex_json_bytes_per_s"),
        ratio(get("ex_bytes_per_s"), get("ex_json_bytes_per_s"), "x npy/json"),
    )
    row(
        "3. the same as JSON tolist(), into Python",
        mib("py_json_bytes_per_s"),
        ratio(get("py_bytes_per_s"), get("py_json_bytes_per_s"), "x npy/json"),
    )

    def us_pair(key: str) -> str:
        p50, p99 = get(f"{key}_p50_us"), get(f"{key}_p99_us")
        return "n/a" if p50 is None or p99 is None else f"{p50:.0f} / {p99:.0f} µs"

    ping50, ping99 = get("port_ping_p50_us"), get("port_ping_p99_us")
    row(
        "4. unary p50 / p99: bare Port ping-pong, orjson (limit; warm, interleaved with the rows below)",
        us_pair("port_ping"),
        spread("port_ping_p50_us", ".0f", " µs p50"),
        "the limit",
    )
    row(
        "4. unary p50 / p99: the same ping-pong measured alone, cold (as before)",
        us_pair("port_ping_cold"),
        ratio(get("port_ping_cold_p50_us"), ping50, "x warm"),
    )
    row(
        "4. unary p50 / p99: a link worker driven straight over its Port",
        us_pair("link_direct"),
        ratio(get("link_direct_p50_us"), ping50, "x limit"),
    )
    row(
        "4. unary p50 / p99: Elixir pool over the link",
        us_pair("ex_unary"),
        f"{ratio(get('ex_unary_p50_us'), ping50)} / {ratio(get('ex_unary_p99_us'), ping99)} limit",
        "p50 <= 6x limit, p99 <= 3x p50",
    )
    row("4. unary p50 / p99: the link channel alone (no pool)", us_pair("ex_conn_unary"))
    tiny = get("ex_tiny_calls_per_s")
    row(
        "4. tiny calls/s: unary add through a pool of 2 link workers, 50 callers",
        num(tiny, ",.0f", "/s"),
        # two workers each answering as fast as the warm ping-pong would do 2 / p50 calls a second
        "n/a" if tiny is None or not ping50 else f"{tiny / (2e6 / ping50):.2f}x 2 / ping-pong p50",
        ">= 25,000/s",
    )
    beam_cpu, workers_cpu = get("ex_tiny_beam_cpu_us_per_call"), get("ex_tiny_workers_cpu_us_per_call")
    row(
        "4. tiny calls: CPU per call, the BEAM / the two workers (/proc utime+stime)",
        "n/a" if beam_cpu is None or workers_cpu is None else f"{beam_cpu:.0f} / {workers_cpu:.0f} µs",
        # calls/s can be at most the machine's CPU seconds a second over the CPU one call takes
        "n/a"
        if beam_cpu is None or workers_cpu is None
        else f"{CORES} cores allow {CORES * 1e6 / (beam_cpu + workers_cpu):,.0f}/s",
        "",
    )
    row(
        "4. unary p50 / p99: Elixir pool over gRPC",
        us_pair("ex_grpc_unary"),
        ratio(get("ex_grpc_unary_p50_us"), get("grpcio_unary_p50_us"), "x grpcio"),
    )
    row("4. unary p50 / p99: grpcio's client, same worker", us_pair("grpcio_unary"), "", "baseline")
    one = get("ex_pool_start_1_ms")
    for n in (1, 4, 8):
        row(
            f"5. pool start, {n} worker{'s' if n > 1 else ''} ready",
            num(get(f"ex_pool_start_{n}_ms"), ".0f", " ms"),
            ratio(get(f"ex_pool_start_{n}_ms"), one),
            "8: ~ 8 x CPU / cores" if n == 8 else "",
        )
    row(
        "5. one worker's start CPU time; 8 x CPU / cores",
        "n/a"
        if get("ex_worker_cpu_ms") is None
        else f"{get('ex_worker_cpu_ms'):.0f} ms; {get('ex_pool_start_8_ideal_ms'):.0f} ms",
        ratio(get("ex_pool_start_8_ms"), get("ex_pool_start_8_ideal_ms"), "x ideal"),
    )
    ok, fifo = get("ex_concurrency_ok"), get("ex_concurrency_in_order")
    row(
        f"6. {r.get('concurrent_streams', 200)} streams over a pool of 4: first chunk p50 / p99",
        "n/a"
        if get("ex_concurrency_p99_first_ms") is None
        else f"{get('ex_concurrency_p50_first_ms'):.0f} / {get('ex_concurrency_p99_first_ms'):.0f} ms",
        ("no loss, in order" if ok else "LOST/REORDERED") + ("" if fifo is None else f"; FIFO {fifo:.2f}")
        if ok is not None
        else "",
        "no loss, in order, fair",
    )
    row(
        "7. cancel over the link: caller killed -> finally, p50 / p99",
        "n/a"
        if get("ex_cancel_p99_ms") is None
        else f"{get('ex_cancel_p50_ms'):.1f} / {get('ex_cancel_p99_ms'):.1f} ms",
        "",
        "p99 <= 10 ms",
    )
    row(
        "7. cancel of a busy generator over the link, p99",
        num(get("ex_cancel_busy_p99_ms"), ".1f", " ms"),
        "",
        "p99 <= 20 ms",
    )
    worker, beam = get("ex_slow_worker_rss_mb"), get("ex_slow_beam_rss_mb")
    growth = ""
    if worker is not None and beam is not None:
        grown_w, grown_b = worker - r["ex_slow_worker_base_mb"], beam - r["ex_slow_beam_base_mb"]
        growth = f"+{grown_w:.0f} / +{grown_b:.0f} MiB over idle; {r['ex_slow_streamed_mb']:.0f} MiB streamed"
    row(
        "8. consumer 10x slower, link: peak RSS worker / BEAM",
        "n/a" if worker is None or beam is None else f"{worker:.0f} / {beam:.0f} MiB",
        growth,
        "bounded",
    )
    row(
        f"9. Ping beside {IDLE_STREAMS} idle reflection streams, p50 / p99",
        "n/a"
        if get("py_ping_idle_streams_p99_ms") is None
        else f"{get('py_ping_idle_streams_p50_ms'):.1f} / {get('py_ping_idle_streams_p99_ms'):.1f} ms",
        "",
        "p99 <= 50 ms",
    )
    for label, key, unit, target in (
        ("small chunks", "remote_items_per_s", "/s", ""),
        ("4 MiB batches", "remote_mib_per_s_4mib", " MiB/s", ">= 0.90x plain"),
        ("unary p50", "remote_unary_p50_us", " µs", ""),
    ):
        tls, plain = get(f"{key}_tls"), get(f"{key}_plain")
        row(
            f"10. remote pool over TLS + token vs plain text + token: {label}",
            "n/a" if tls is None or plain is None else f"{tls:,.0f} vs {plain:,.0f}{unit}",
            ratio(tls, plain, "x plain"),
            target,
        )
    tls, plain = get("tls_limit_mib_per_s_tls"), get("tls_limit_mib_per_s_plain")
    row(
        "10. bare sockets, TLS vs plain text: 4 MiB blocks (the limit)",
        "n/a" if tls is None or plain is None else f"{tls:,.0f} vs {plain:,.0f} MiB/s",
        ratio(tls, plain, "x plain"),
        "the limit",
    )
    added = get("cross_node_unary_p50_us_added_us")
    row(
        "11. unary p50 served by another node's worker vs the local node's",
        "n/a"
        if added is None
        else f"{get('cross_node_unary_p50_us_other_node'):.0f} vs {get('cross_node_unary_p50_us_local'):.0f} µs",
        "n/a" if added is None else f"{added:+.0f} µs",
        "<= +100 µs",
    )
    rtt = get("cross_node_unary_p50_us_dist_rtt_us")
    lease_added = get("cross_node_unary_p50_us_lease_added_us")
    row(
        "11. the same, the floor: one round trip of distributed Erlang between the nodes (:erpc, interleaved)",
        "n/a" if rtt is None else f"{rtt:.0f} µs",
        "n/a" if rtt is None or added is None else f"the call adds {added - rtt:+.0f} µs more",
        "the limit",
    )
    row(
        "11. the same call on a lease of the other node's worker (streams, sessions, input, handlers)",
        "n/a" if lease_added is None else f"{get('cross_node_unary_p50_us_other_node_with_lease'):.0f} µs",
        "n/a" if lease_added is None else f"{lease_added:+.0f} µs",
        "",
    )
    for phase, what in (
        ("storm", f"{r.get('mem_storm_streams', 0):,.0f} cancelled busy streams"),
        ("soak", f"a {r.get('mem_soak_s', 0):.0f} s soak of mixed calls"),
    ):
        two, unset = (
            [get(f"mem_{phase}_{label}_{key}_mb") for key in ("start", "end", "peak")] for label in ("arenas2", "glibc")
        )
        known = None not in two and None not in unset
        row(
            f"14. worker RSS start -> end (peak), {what}: MALLOC_ARENA_MAX=2 (default) vs unset",
            " vs ".join(f"{a:.0f} -> {b:.0f} ({c:.0f})" for a, b, c in (two, unset)) + " MiB" if known else "n/a",
            f"+{two[1] - two[0]:.0f} vs +{unset[1] - unset[0]:.0f} MiB" if known else "n/a",
            "bounded",
        )
    jsonl_in, ex_in = get("in_port_jsonl_items_per_s"), get("in_ex_items_per_s")
    row(
        "15. small items into a tool, naive JSON lines into a Python reader over a Port (limit; warm, interleaved)",
        num(jsonl_in, ",.0f", "/s"),
        spread("in_port_jsonl_items_per_s", ",.0f", "/s"),
        "the limit",
    )
    row(
        '15. small items into a tool: Krait.execute(input: ...), {"i": n} summed by a sync tool, link',
        num(ex_in, ",.0f", "/s"),
        ratio(ex_in, jsonl_in, "x limit"),
        ">= 0.8x limit",
    )
    bytes_in, ex_bytes_in = get("in_port_bytes_per_s"), get("in_ex_bytes_per_s")
    row(
        "15. 4 MiB blocks into a Python reader over a Port (limit; warm, interleaved)",
        mib("in_port_bytes_per_s"),
        "n/a"
        if get("in_port_bytes_per_s_min") is None
        else f"spread {get('in_port_bytes_per_s_min') / MiB:,.0f}-{get('in_port_bytes_per_s_max') / MiB:,.0f} MiB/s",
        "the limit",
    )
    row(
        "15. 4 MiB float32 frames into a tool (array_input), link",
        mib("in_ex_bytes_per_s"),
        ratio(ex_bytes_in, bytes_in, "x limit"),
        ">= 0.9x limit",
    )
    pong = get("echo_ping_p50_us")
    for label, key in (
        ("echo round trip (one item in, its chunk out)", "echo_p50_us"),
        ("ctx.call round trip", "handler_p50_us"),
    ):
        row(
            f"15. {label} p50 vs the bare Port ping-pong (warm, interleaved)",
            "n/a" if get(key) is None or pong is None else f"{get(key):.0f} vs {pong:.0f} µs",
            ratio(get(key), pong, "x ping-pong"),
            "<= 3x ping-pong",
        )
    one_stage, piped = get("pipeline_one_stage_items_per_s"), get("pipeline_items_per_s")
    short, long = get("pipeline_rss_hwm_short_mb"), get("pipeline_rss_hwm_long_mb")
    row(
        "15. three-stage pipeline of small items (stream_small -> echo_input -> echo_input) vs one stage",
        "n/a" if one_stage is None or piped is None else f"{piped:,.0f} vs {one_stage:,.0f}/s",
        ratio(piped, one_stage, "x one stage"),
        ">= 0.5x one stage",
    )
    row(
        "15. the pipeline's workers, peak RSS after a run vs after a 4x longer one",
        "n/a" if short is None or long is None else f"{short:.0f} vs {long:.0f} MiB",
        "n/a" if short is None or long is None else f"{long - short:+.0f} MiB",
        "flat",
    )
    rows.extend(observability.rows(get))
    unary, chunk = get("worker_cpu_unary_us"), get("worker_cpu_chunk_us")
    naive_unary, naive_chunk = get("naive_cpu_unary_us"), get("naive_cpu_chunk_us")
    pooled = get("naive_pooled_cpu_chunk_us")
    row(
        "16. worker CPU per unary call / per small chunk (link; utime+stime), vs a naive loop: orjson in+out per"
        " call, orjson + join per chunk",
        "n/a" if unary is None or chunk is None else f"{unary:.1f} / {chunk:.2f} µs",
        "n/a"
        if naive_unary is None or naive_chunk is None
        else f"naive {naive_unary:.2f} / {naive_chunk:.2f} µs"
        + ("" if pooled is None else f" ({pooled:.2f} per chunk copying each output, as the worker does)"),
        "<= 25 / <= 1 µs",
    )
    for front, key in (("gRPC Ping", "ping"), ("HTTP GET /v1/tools", "http")):
        idle, held = get(f"hostile_idle_{key}_p99_ms"), get(f"hostile_attack_{key}_p99_ms")
        row(
            f"12. right-token {front} p50 / p99: idle vs {hostile.HALF_OPEN} half-open unauthenticated calls + "
            f"{hostile.SLOW_SOCKETS} slow sockets",
            "n/a"
            if idle is None or held is None
            else f"{get(f'hostile_idle_{key}_p50_ms'):.1f} / {idle:.1f} vs "
            f"{get(f'hostile_attack_{key}_p50_ms'):.1f} / {held:.1f} ms",
            "" if get("hostile_attack_failed") is None else f"{get('hostile_attack_failed'):.0f} failed under attack",
            "p99 <= 50 ms",
        )
    for what, key in (("unary add", "unary"), (f"{mcp_bench.STREAM_CHUNKS}-chunk stream", "stream")):
        over_mcp, over_http = get(f"mcp_mcp_{key}_p50_ms"), get(f"mcp_http_{key}_p50_ms")
        row(
            f"13. {what} p50: MCP (Streamable HTTP{', chunks as progress' if key == 'stream' else ''}) vs the HTTP "
            f"front ({'SSE' if key == 'stream' else 'POST'}), same worker, interleaved",
            "n/a" if over_mcp is None or over_http is None else f"{over_mcp:.1f} vs {over_http:.1f} ms",
            "n/a" if over_mcp is None or not over_http else f"{over_mcp / over_http:.1f}x",
            "",
        )
    return rows


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        except OSError:
            return "n/a"

    otp = version(["erl", "-noshell", "-eval", 'io:format("~s", [erlang:system_info(otp_release)]), halt().'])
    elixir = version(["elixir", "--short-version"])
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"Python {platform.python_version()}, grpcio {grpc.__version__}, numpy {np.__version__},"
        f" orjson {orjson.__version__}",
        "beam": f"Erlang/OTP {otp}, Elixir {elixir}",
    }


def markdown(rows: list[tuple[str, str, str, str]], info: dict[str, str], command: str, mode: str) -> str:
    lines = [f"`{command}` ({mode}) on {info['cpu']}, {info['memory']}; {info['python']}; {info['beam']}.", ""]
    lines += ["| benchmark | result | ratio | target |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: proves the benchmarks work")
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each full-size benchmark (median)")
    parser.add_argument("--python-only", action="store_true", help="skip the Elixir half")
    parser.add_argument("--elixir-only", action="store_true", help="skip the Python half")
    parser.add_argument(
        "--busy",
        action="store_true",
        help="run while a CPU-bound process holds one core; results to .bench/results-busy.{json,md}",
    )
    ns = parser.parse_args()
    runs = 1 if ns.quick else ns.runs
    cfg = {**(QUICK if ns.quick else FULL), "runs": runs, "quick": ns.quick}
    started = time.monotonic()
    results: dict[str, Any] = {"concurrent_streams": cfg["concurrent_streams"]}
    # the workers started here serve with a token, as `serve` does by default, and the clients send it
    os.environ.setdefault(TOKEN_ENV, generate_token())
    with CpuHog() if ns.busy else contextlib.nullcontext() as hog:
        if not ns.elixir_only:
            results.update(python_benchmarks(cfg, runs))
            results.update(observability.observability_benchmarks(cfg, runs))
            results.update(worker_cpu.benchmark(ns.quick, runs))
            results.update(hostile.benchmark(cfg["ping_samples"]))
            results.update(mcp_bench.benchmark(max(20, cfg["ping_samples"] // 10)))
        if not ns.python_only:
            results.update(elixir_benchmarks(cfg))
        if hog is not None:
            results["busy_hog_cpu_share"] = hog.cpu_share()
    mode = (
        f"busy: one core held by a CPU-bound process ({results['busy_hog_cpu_share']:.2f} of a core)"
        if ns.busy
        else "idle: nothing else started"
    )
    rows = table(results)
    info = machine()
    command = "scripts/bench " + " ".join(sys.argv[1:])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(
        f"\nKrait benchmarks ({'quick' if ns.quick else f'median of {runs} runs'}, {mode},"
        f" {time.monotonic() - started:.0f} s)"
    )
    for key, value in info.items():
        print(f"  {key}: {value}")
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    # a busy run never overwrites the idle one: the two are read side by side
    name = "results-busy" if ns.busy else "results"
    (out_dir / f"{name}.json").write_text(
        json.dumps({"command": command, "mode": mode, "machine": info, "config": cfg, "results": results}, indent=2)
    )
    (out_dir / f"{name}.md").write_text(markdown(rows, info, command.strip(), mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
