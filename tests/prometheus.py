"""A real Prometheus server for tests: Debian's ``prometheus`` started on loopback with a generated config and a
short scrape interval, queried through its HTTP API, stopped by pid. A target may want a token (sent from a
``credentials_file``, as a deployment does) and TLS (``tls_config``)."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .support import eventually

SCRAPE_INTERVAL = "200ms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Target:
    """A scrape target: ``host:port``, the token Prometheus sends (``authorization.credentials_file``), and with
    ``ca`` HTTPS verified against that CA file (``server_name``: the name to verify, when not the address's)."""

    address: str
    token: str | None = None
    ca: str | None = None
    server_name: str | None = None
    interval: str | None = None  # scrape_interval and scrape_timeout (default: SCRAPE_INTERVAL, both)
    timeout: str | None = None

    def job(self, name: str, tmp: Path) -> str:
        lines = [f"  - job_name: {name}"]
        if self.interval:
            lines.append(f"    scrape_interval: {self.interval}")
        if self.timeout:
            lines.append(f"    scrape_timeout: {self.timeout}")
        if self.token is not None:
            credentials = tmp / f"{name}.token"
            credentials.write_text(self.token + "\n")
            credentials.chmod(0o600)
            lines += ["    authorization:", f"      credentials_file: {credentials}"]
        if self.ca is not None:
            lines += ["    scheme: https", "    tls_config:", f"      ca_file: {self.ca}"]
            if self.server_name:
                lines.append(f"      server_name: {self.server_name}")
        lines += ["    static_configs:", f"      - targets: ['{self.address}']"]
        return "".join(line + "\n" for line in lines)


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

    def targets(self) -> dict[str, dict[str, Any]]:
        """Each active target by job: its ``health`` ("up", "down", "unknown") and ``lastError``."""
        return {t["labels"]["job"]: t for t in self.get("/api/v1/targets")["activeTargets"]}

    def targets_up(self) -> list[str]:
        return [t["scrapeUrl"] for t in self.targets().values() if t["health"] == "up"]


@contextlib.contextmanager
def running_prometheus(targets: dict[str, str | Target], tmp: Path, timeout: float = 30.0) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (job name -> host:port or :class:`Target`) every 200 ms."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is missing: scripts/setup installs Debian's prometheus package"
    jobs = "".join(
        (target if isinstance(target, Target) else Target(target)).job(job, tmp) for job, target in targets.items()
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
