"""A worker's Prometheus metrics (``serve --metrics-port``), read by a real Prometheus server (with the token and
over TLS, as deployed) and by the ``Metrics`` call; an adapter's own metrics declared through the SDK; the metrics
port's own rules (token, Host, bounded connections)."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from python_worker.client import Client, KraitError
from python_worker.metrics import DURATION_BUCKETS, MAX_CONNECTIONS, REQUEST_DEADLINE_S
from python_worker.transports.grpc.security import ClientTLS

from .certs import make_certs
from .prometheus import Target, running_prometheus
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


def get(url: str, token: str | None, host: str | None = None, ca: str | None = None) -> tuple[int, str, dict]:
    """GET ``url`` with ``Authorization: Bearer token``: status, body, headers (an error status too)."""
    import ssl

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    if host:
        request.add_header("Host", host)
    context = ssl.create_default_context(cafile=ca) if ca else None
    if context is not None:
        context.check_hostname = False  # the certificate names localhost; the CA check is what matters here
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def scrape_text(port: int, token: str | None) -> str:
    status, body, headers = get(f"http://127.0.0.1:{port}/metrics", token)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return body


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
        scraped = samples(scrape_text(port, worker.token))
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

        def scrape() -> dict:
            return samples(scrape_text(worker.info["metrics_port"], worker.token))

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
        auth = {"Authorization": f"Bearer {worker.token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{worker.info['http_port']}", timeout=10, headers=auth) as http:
            assert http.post("/v1/tools/slow_tool?timeout_ms=300", json={"seconds": 30}).status_code == 504
            body = http.post("/v1/tools/endless_stream/stream?timeout_ms=300", json={"interval_ms": 20}).text
            assert "DEADLINE_EXCEEDED" in body

        def counted() -> dict:
            got = samples(scrape_text(worker.info["metrics_port"], worker.token))
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


def test_prometheus_scrapes_a_worker_with_its_token_over_tls(tmp_path: Path) -> None:
    # as deployed: the metrics port has the worker's certificate and token; Prometheus sends the token from a
    # credentials_file and verifies the certificate; a job with a wrong token is refused (its target down, 401)
    certs = make_certs(tmp_path / "certs")
    tls = ("--tls-cert", certs.server_crt, "--tls-key", certs.server_key)
    with running_worker(METERED, "--metrics-port", "0", *tls) as worker:
        assert worker.token
        client_tls = ClientTLS(ca=certs.ca, server_name="localhost")
        with Client(worker.target, tls=client_tls, timeout=30) as client:
            make_calls(client)
            address = f"127.0.0.1:{worker.info['metrics_port']}"
            targets = {
                "krait_worker": Target(address, token=worker.token, ca=certs.ca, server_name="localhost"),
                # a refusal is held over a second: this job waits long enough to see it
                "wrong_token": Target(address, "not-the-token", certs.ca, "localhost", interval="2s", timeout="1900ms"),
            }
            with running_prometheus(targets, tmp_path) as prometheus:
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
                # make's duration histogram as Prometheus holds it: the worker's buckets, cumulative, ending at +Inf
                # with the count; a quantile over them lies within the buckets (how fast calls are: the benchmarks)
                series = prometheus.query('krait_tool_duration_seconds_bucket{job="krait_worker",tool="make"}')
                buckets = {float(s["metric"]["le"]): float(s["value"][1]) for s in series}
                assert sorted(buckets) == [*DURATION_BUCKETS, math.inf]
                counts = [buckets[le] for le in sorted(buckets)]
                assert counts == sorted(counts) and counts[-1] == 3
                assert value('krait_tool_duration_seconds_count{job="krait_worker",tool="make"}') == 3
                total = value('krait_tool_duration_seconds_sum{job="krait_worker",tool="make"}')
                assert total is not None and total > 0
                p99 = value('histogram_quantile(0.99, sum by (le) (krait_tool_duration_seconds_bucket{tool="make"}))')
                assert p99 is not None and 0 < p99 <= DURATION_BUCKETS[-1]
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
                refused = eventually(
                    lambda: prometheus.targets()["wrong_token"]["lastError"],
                    timeout=30,
                    interval=0.1,
                    what="the wrong token's scrape to fail",
                )
                assert "401" in refused and prometheus.targets()["wrong_token"]["health"] == "down"
                assert value('up{job="wrong_token"}') == 0


def test_the_metrics_port_wants_the_token_and_the_right_host(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_worker(METERED, "--metrics-port", "0") as worker:
        url = f"http://127.0.0.1:{worker.info['metrics_port']}/metrics"
        started = time.monotonic()
        status, body, headers = get(url, None)
        assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer") and "krait_" not in body
        assert time.monotonic() - started >= 0.9  # a refusal is held (the worker's shared penalty)
        assert get(url, "wrong")[0] == 401
        assert get(url.replace("/metrics", "/"), worker.token)[0] == 404
        assert get(url, worker.token)[0] == 200
    # without any credential (--no-auth), a page whose name resolves to 127.0.0.1 (DNS rebinding) is refused
    monkeypatch.delenv("KRAIT_TOKEN")
    with running_worker(METERED, "--metrics-port", "0", "--no-auth") as worker:
        url = f"http://127.0.0.1:{worker.info['metrics_port']}/metrics"
        assert get(url, None)[0] == 200
        assert get(url, None, host="rebound.example:80")[0] == 403
        assert get(url, None, host="localhost:80")[0] == 200
    # --allowed-hosts names the hosts that may be named (and only those)
    with running_worker(METERED, "--metrics-port", "0", "--no-auth", "--allowed-hosts", "Metrics.Example") as worker:
        url = f"http://127.0.0.1:{worker.info['metrics_port']}/metrics"
        assert get(url, None, host="metrics.example:9100")[0] == 200
        assert get(url, None, host="localhost")[0] == 403


def test_idle_connections_to_the_metrics_port_are_bounded_and_cut() -> None:
    with running_worker(METERED, "--metrics-port", "0") as worker:
        port = worker.info["metrics_port"]
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(MAX_CONNECTIONS)]
        try:
            for sock in idle:  # a request that never ends: half a request line
                sock.sendall(b"GET /metr")
            time.sleep(0.5)
            # every slot held: one more connection is closed unanswered
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                extra.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: Bearer {worker.token}\r\n\r\n".encode())
                assert extra.recv(100) == b""
            # a byte a second from each: never silent long enough for the socket timeout, but each is cut at its
            # request deadline all the same, and the port serves again
            started = time.monotonic()
            open_ = list(idle)
            while open_ and time.monotonic() - started < REQUEST_DEADLINE_S + 5:
                for sock in list(open_):
                    try:
                        sock.sendall(b"i")
                    except OSError:
                        open_.remove(sock)
                time.sleep(1)
            assert not open_, f"{len(open_)} connections still open"
            assert time.monotonic() - started <= REQUEST_DEADLINE_S + 3
            eventually(lambda: get(f"http://127.0.0.1:{port}/metrics", worker.token)[0] == 200, timeout=5)
        finally:
            for sock in idle:
                sock.close()


def test_no_metrics_counts_nothing() -> None:
    with running_worker(METERED, "--no-metrics") as worker, Client(worker.target) as client:
        client.execute("make", colour="red")
        assert client.metrics() == ""
