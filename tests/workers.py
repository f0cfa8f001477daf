"""Starting real worker processes for tests: each is stopped (and reaped) by the test that started it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .support import eventually

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    port: int
    info: dict
    host: str = "127.0.0.1"
    # the token its TCP ports want: the one it made (announced), else the one it was given ($KRAIT_TOKEN)
    token: str | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def spawn(adapter: str, *args: str, env: dict[str, str | None] | None = None, stderr=None) -> subprocess.Popen[bytes]:
    """``serve`` with ``args``; ``env`` adds to this process's environment (a None value removes a variable)."""
    environ = {key: value for key, value in {**os.environ, **(env or {})}.items() if value is not None}
    cmd = [PYTHON, "-m", "python_worker", "serve", "--adapter", adapter, "--port", "0", *args]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=environ,
    )


def wait_ready(process: subprocess.Popen[bytes], timeout: float = 30.0) -> dict:
    """Read stdout until the KRAIT_READY line (bounded by ``timeout``)."""
    assert process.stdout is not None
    stdout = process.stdout
    os.set_blocking(stdout.fileno(), False)
    buffered = [b""]

    def ready() -> dict | None:
        buffered[0] += stdout.read() or b""
        for line in buffered[0].decode(errors="replace").splitlines():
            if line.startswith("KRAIT_READY "):
                return json.loads(line.removeprefix("KRAIT_READY "))
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode} before it was ready")
        return None

    try:
        return eventually(ready, timeout=timeout, interval=0.02, what="the worker's KRAIT_READY line")
    except AssertionError:
        process.kill()
        raise TimeoutError("worker did not report ready") from None


@contextlib.contextmanager
def running_worker(
    adapter: str = "adapters.showcase:ShowcaseAdapter", *args: str, host: str = "127.0.0.1", **kw
) -> Iterator[Worker]:
    process = spawn(adapter, "--host", host, *args, **kw)
    worker = None
    try:
        info = wait_ready(process)
        given = {**os.environ, **(kw.get("env") or {})}.get("KRAIT_TOKEN")
        worker = Worker(process, info["port"], info, host, info.get("token") or given)
        yield worker
    finally:
        if worker is not None:
            worker.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(5)
