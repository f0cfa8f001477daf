"""A worker's Prometheus metrics (``serve --metrics-port``), read by a real Prometheus server and by the
``Metrics`` call; an adapter's own metrics declared through the SDK."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from python_worker.client import Client, KraitError

from .prometheus import running_prometheus
from .support import eventually
from .workers import ROOT, running_worker

METERED = "tests.fixtures.metered:MeteredAdapter"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def make_calls(client: Client) -> None:
    """3 ok unary calls, 2 ok streams of 4 chunks x 5 bytes, a failing call, a call to an unknown tool."""
    for colour in ("red", "red", "blue"):
        client.execute("make", colour=colour, count=2)
    for _ in range(2):
        assert len(list(client.execute_stream("chunks", count=4, size=5))) == 5  # with the final chunk
    with pytest.raises(KraitError):
        client.execute("fail")
    with pytest.raises(KraitError):
        client.execute("no_such_tool")


def test_metrics_endpoint_counts_calls_by_tool_and_status() -> None:
    with running_worker(METERED, "--metrics-port", "0") as worker, Client(worker.target) as client:
        port = worker.info["metrics_port"]
        assert isinstance(port, int) and port > 0
        make_calls(client)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            scraped = samples(response.read().decode())
        # the same registry through the Metrics call
        fetched = samples(client.metrics())

    for got in (scraped, fetched):
        assert got[("krait_tool_calls_total", (("status", "OK"), ("tool", "make")))] == 3
        assert got[("krait_tool_calls_total", (("status", "OK"), ("tool", "chunks")))] == 2
        assert got[("krait_tool_calls_total", (("status", "UNKNOWN"), ("tool", "fail")))] == 1
        # an unknown tool's name is not a label value: a caller cannot create time series at will
        assert got[("krait_tool_calls_total", (("status", "NOT_FOUND"), ("tool", "_unknown")))] == 1
        assert not any(dict(labels).get("tool") == "no_such_tool" for _, labels in got)
        assert got[("krait_tool_duration_seconds_count", (("tool", "make"),))] == 3
        assert got[("krait_tool_duration_seconds_sum", (("tool", "make"),))] > 0
        # 4 chunks of 5 bytes and an empty synthetic final chunk per stream
        assert got[("krait_stream_chunks_total", (("tool", "chunks"),))] == 10
        assert got[("krait_stream_bytes_total", (("tool", "chunks"),))] == 40
        assert got[("krait_calls_in_flight", ())] == 0
        assert got[("krait_sessions", ())] == 0
        assert got[("process_resident_memory_bytes", ())] > 0
        # the adapter's own, declared through python_worker.sdk.metrics
        assert got[("metered_widgets_total", (("colour", "red"),))] == 4
        assert got[("metered_widgets_total", (("colour", "blue"),))] == 2
        assert got[("metered_size_count", ())] == 3
        assert got[("metered_depth", ())] == 2


def test_in_flight_and_sessions_are_read_at_scrape_time() -> None:
    with running_worker("adapters.showcase:ShowcaseAdapter", "--metrics-port", "0") as worker:
        url = f"http://127.0.0.1:{worker.info['metrics_port']}/metrics"

        def scrape() -> dict:
            with urllib.request.urlopen(url, timeout=5) as response:
                return samples(response.read().decode())

        with Client(worker.target) as client:
            client.session("s-1").execute("echo", value=1)
            stream = client.execute_stream("endless_stream", interval_ms=20)
            next(iter(stream))
            eventually(lambda: scrape()[("krait_calls_in_flight", ())] == 1, what="one call in flight")
            assert scrape()[("krait_sessions", ())] == 1
            stream.close()
            eventually(lambda: scrape()[("krait_calls_in_flight", ())] == 0, timeout=10, what="no call in flight")
            got = scrape()
        assert got[("krait_tool_calls_total", (("status", "CANCELLED"), ("tool", "endless_stream")))] == 1


def test_a_call_stopped_by_its_deadline_counts_as_deadline_exceeded_not_cancelled() -> None:
    # over gRPC (unary and stream) and over HTTP (unary and SSE); a caller who goes away stays CANCELLED
    import httpx

    from python_worker.client import DeadlineExceededError

    with running_worker("adapters.showcase:ShowcaseAdapter", "--metrics-port", "0", "--http-port", "0") as worker:
        with Client(worker.target) as client:
            with pytest.raises(DeadlineExceededError):
                client.call("slow_tool", {"seconds": 30}, timeout=0.3)
            with pytest.raises(DeadlineExceededError):
                list(client.stream("endless_stream", {"interval_ms": 20}, timeout=0.3))
            gone = client.execute_stream("endless_stream", interval_ms=20)
            next(iter(gone))
            gone.close()
        with httpx.Client(base_url=f"http://127.0.0.1:{worker.info['http_port']}", timeout=10) as http:
            assert http.post("/v1/tools/slow_tool?timeout_ms=300", json={"seconds": 30}).status_code == 504
            body = http.post("/v1/tools/endless_stream/stream?timeout_ms=300", json={"interval_ms": 20}).text
            assert "DEADLINE_EXCEEDED" in body

        url = f"http://127.0.0.1:{worker.info['metrics_port']}/metrics"

        def counted() -> dict:
            with urllib.request.urlopen(url, timeout=5) as response:
                got = samples(response.read().decode())
            assert got[("krait_calls_in_flight", ())] == 0
            return got

        got = eventually(counted, timeout=10, what="every call ended")
    calls = {labels: n for (name, labels), n in got.items() if name == "krait_tool_calls_total"}
    assert calls[(("status", "DEADLINE_EXCEEDED"), ("tool", "slow_tool"))] == 2
    assert calls[(("status", "DEADLINE_EXCEEDED"), ("tool", "endless_stream"))] == 2
    assert calls[(("status", "CANCELLED"), ("tool", "endless_stream"))] == 1


def test_metrics_port_taken_is_a_clear_startup_error(tmp_path: Path) -> None:
    import socket
    import subprocess

    from .workers import spawn

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = spawn(METERED, "--metrics-port", port, "--stdin-watch", "off", stderr=subprocess.PIPE)
        try:
            assert process.stderr is not None
            process.wait(30)
            stderr = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    assert process.returncode == 1
    assert b"cannot serve metrics on 127.0.0.1" in stderr


def test_prometheus_scrapes_a_worker(tmp_path: Path) -> None:
    with running_worker(METERED, "--metrics-port", "0") as worker, Client(worker.target) as client:
        make_calls(client)
        target = f"127.0.0.1:{worker.info['metrics_port']}"
        with running_prometheus({"krait_worker": target}, tmp_path) as prometheus:
            eventually(lambda: prometheus.targets_up(), timeout=30, interval=0.1, what="the worker scraped")

            def value(promql: str) -> float | None:
                return prometheus.value(promql)

            ok = eventually(
                lambda: value('krait_tool_calls_total{job="krait_worker",tool="make",status="OK"}'),
                timeout=30,
                interval=0.1,
                what="make's call count in Prometheus",
            )
            assert ok == 3
            assert value('krait_tool_calls_total{tool="fail",status="UNKNOWN"}') == 1
            assert value('krait_tool_duration_seconds_count{tool="chunks"}') == 2
            assert value('krait_stream_chunks_total{tool="chunks"}') == 10
            assert value('metered_widgets_total{colour="red"}') == 4
            # a quantile from the histogram: the calls took some time, and less than the histogram's top bucket
            p99 = value('histogram_quantile(0.99, sum by (le) (krait_tool_duration_seconds_bucket{tool="make"}))')
            assert p99 is not None and 0 < p99 <= 0.25
            # every query of the Grafana dashboard in docs/ is valid PromQL over these metrics
            dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", "1m").replace("$job", ".*")
                    prometheus.query(expr)  # raises on a query Prometheus refuses
            # a call made now shows up at the next scrape

            client.execute("make", colour="green")
            eventually(
                lambda: value('krait_tool_calls_total{tool="make",status="OK"}') == 4,
                timeout=30,
                interval=0.1,
                what="the fourth call in Prometheus",
            )


def test_no_metrics_counts_nothing() -> None:
    with running_worker(METERED, "--no-metrics") as worker, Client(worker.target) as client:
        client.execute("make", colour="red")
        assert client.metrics() == ""
