"""scripts/demo_page.py (the live page part of scripts/demo): piped, it prints the page's URL, streams over SSE and
ends by itself; on a terminal it keeps serving the page until Enter. Real processes, a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.request

import pytest

from .support import alive
from .workers import ROOT

SCRIPT = ROOT / "scripts" / "demo_page.py"
URL = re.compile(rb"page:\s+(?:\x1b\[1m)?(http://127\.0\.0\.1:\d+/)")


@pytest.mark.timeout(120)
def test_piped_it_prints_the_url_streams_over_sse_and_ends_by_itself() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=100
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert URL.search(result.stdout), out
    token = re.search(r"#token=([A-Za-z0-9_-]+)", out)
    assert token, out  # the page's URL carries the worker's token in its fragment
    assert f"curl -N -H 'Authorization: Bearer {token.group(1)}' 'http://127.0.0.1:" in out
    assert "/v1/tools/train_model/stream?args=" in out
    assert [line.split()[3] for line in out.splitlines() if "event: chunk" in line] == ["1/3", "2/3", "3/3"]
    assert "event: final  complete" in out and out.rstrip().endswith("worker stopped")


@pytest.mark.timeout(120)
def test_on_a_terminal_it_serves_the_page_until_enter() -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)], cwd=ROOT, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + 90
        while b"press Enter" not in output:
            assert time.monotonic() < deadline and process.poll() is None, output.decode(errors="replace")
            if select.select([leader], [], [], 0.5)[0]:
                output += os.read(leader, 65536)
        url = URL.search(output).group(1).decode()  # type: ignore[union-attr]
        time.sleep(1.0)  # still serving a while later: it waits for Enter, not for a timer
        pid = int(re.search(rb"worker pid (\d+)", output).group(1))  # type: ignore[union-attr]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"<title>Krait" in response.read()
        os.write(leader, b"\n")
        assert process.wait(30) == 0
        assert not alive(pid)  # the worker was stopped with it
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(leader)
