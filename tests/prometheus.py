"""A real Prometheus server for tests: Debian's ``prometheus`` started on loopback with a generated config and a
short scrape interval, queried through its HTTP API, stopped by pid."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .support import eventually

SCRAPE_INTERVAL = "200ms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a refused query: Prometheus says why in its body
            raise AssertionError(f"Prometheus refused {path} {params}: {error.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=promql)["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The one sample of ``promql``, or None when it has none yet."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> list[str]:
        active = self.get("/api/v1/targets")["activeTargets"]
        return [t["scrapeUrl"] for t in active if t["health"] == "up"]


@contextlib.contextmanager
def running_prometheus(targets: dict[str, str], tmp: Path, timeout: float = 30.0) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (job name -> host:port) every 200 ms."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is missing: scripts/setup installs Debian's prometheus package"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n" for job, target in targets.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        server = Prometheus(port)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {process.returncode}: {(tmp / 'prometheus.log').read_text()}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
            return False

        eventually(ready, timeout=timeout, interval=0.1, what="prometheus ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
