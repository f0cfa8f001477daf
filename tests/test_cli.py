"""The command line: `tools` and `call` against a real worker."""

from __future__ import annotations

import subprocess
import sys

from .workers import ROOT, running_worker


def test_cli_call_and_tools() -> None:
    with running_worker() as worker:
        run = [sys.executable, "-m", "python_worker"]
        out = subprocess.run(
            [*run, "call", "stream_progress", "--target", worker.target, "--args", '{"steps": 3}', "--stream"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            check=True,
            text=True,
        ).stdout.splitlines()
        assert out[0] == '[0] {"step": 1, "total": 3, "progress": 33.33333333333333}'
        assert out[3].startswith("[3 final] null") and '"synthetic_final": "true"' in out[3]
        tools = subprocess.run(
            [*run, "tools", "--target", worker.target], cwd=ROOT, capture_output=True, timeout=30, check=True, text=True
        ).stdout
        assert "stream  stream_progress(steps: integer = 10, delay_ms: number = 0.0)  Stream progress updates" in tools
        failed = subprocess.run(
            [*run, "call", "add", "--target", worker.target, "--args", '{"a": 1}'],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            text=True,
        )
        assert failed.returncode == 1
        assert "error (INVALID_ARGUMENT): ArgumentError: add: missing required argument 'b'" in failed.stderr
