"""What metrics and tracing cost a worker: small-chunk stream throughput and unary call rate through the Python
client, on three workers side by side: nothing counted (``--no-metrics``, ``OTEL_SDK_DISABLED=true``), metrics on
(the default) with tracing off, and metrics and recorded spans on (``traced_showcase``). Each figure is the median
of alternating runs, like the other benchmarks; the rows give each as a ratio to the first."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

from python_worker.client import Client
from tests.workers import running_worker

SHOWCASE = "adapters.showcase:ShowcaseAdapter"
TRACED = "scripts.benchmarks.traced_showcase:TracedShowcaseAdapter"


def observability_benchmarks(cfg: dict[str, Any], runs: int) -> dict[str, float]:
    items, calls = cfg["items"], cfg["latency_calls"]
    off = {"OTEL_SDK_DISABLED": "true"}
    with contextlib.ExitStack() as stack:
        workers = {
            "off": stack.enter_context(running_worker(SHOWCASE, "--no-metrics", env=off)),
            "metrics": stack.enter_context(running_worker(SHOWCASE, env=off)),
            "traced": stack.enter_context(running_worker(TRACED)),
        }
        clients = {name: stack.enter_context(Client(w.target, timeout=600)) for name, w in workers.items()}

        def items_rate(client: Client) -> float:
            started = time.perf_counter()
            n = sum(1 for _ in client.execute_stream("stream_small", count=items))
            assert n == items + 1
            return items / (time.perf_counter() - started)

        def unary_rate(client: Client) -> float:
            started = time.perf_counter()
            for i in range(calls):
                assert client.execute("echo", value=i) == i
            return calls / (time.perf_counter() - started)

        out: dict[str, float] = {}
        for kind, measure in (("items", items_rate), ("unary", unary_rate)):
            samples: dict[str, list[float]] = {name: [] for name in clients}
            for client in clients.values():
                measure(client)  # warm-up: connections' windows, the tools' first calls
            names = list(clients)
            for i in range(runs):
                # each run starts with another worker: whatever favours a position (the machine's other load,
                # caches) is spread over all three
                for name in names[i % 3 :] + names[: i % 3]:
                    samples[name].append(measure(clients[name]))
            for name, values in samples.items():
                out[f"obs_{kind}_{name}_per_s"] = statistics.median(values)
    return out


def rows(get: Any) -> list[tuple[str, str, str, str]]:
    """(benchmark, value, ratio to no metrics, target) rows."""
    out = []
    for kind, label, unit in (("items", "small chunks", "/s"), ("unary", "unary calls", " calls/s")):
        base = get(f"obs_{kind}_off_per_s")
        for name, what, target in (
            ("off", "no metrics, no tracing", "baseline"),
            ("metrics", "metrics on, tracing off", ">= 0.95x"),
            ("traced", "metrics and spans on", ">= 0.85x"),
        ):
            v = get(f"obs_{kind}_{name}_per_s")
            value = "n/a" if v is None else f"{v:,.0f}{unit}"
            ratio = "n/a" if v is None or not base else f"{v / base:.2f}x"
            out.append((f"obs. {label} into Python, {what}", value, ratio, target))
    return out
