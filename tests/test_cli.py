"""The command line: `tools` and `call` against a real worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .workers import ROOT, running_worker

RUN = [sys.executable, "-m", "python_worker"]


def _cli(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([*RUN, *args], cwd=ROOT, env=environ, capture_output=True, timeout=60, text=True)


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

        def call(*args: str) -> subprocess.CompletedProcess[str]:
            command = [*run, "call", *args, "--target", worker.target]
            return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=30, text=True)

        # the wrong kind of call is told in the CLI's own terms: a flag, not a Python method
        unary = call("stream_progress")
        assert unary.returncode == 1
        assert "stream_progress is a streaming tool: call it with --stream" in unary.stderr, unary.stderr
        streamed = call("add", "--args", '{"a": 1, "b": 2}', "--stream")
        assert "add is not a streaming tool: call it without --stream" in streamed.stderr, streamed.stderr
        # a tool's input stream comes from --input: JSON lines, from a file or stdin
        assert "unary   sum_input(items: stream of object)" in tools
        summed = subprocess.run(
            [*run, "call", "sum_input", "--target", worker.target, "--input", "-"],
            input='{"i": 1}\n{"i": 41}\n',
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            text=True,
        )
        assert summed.stdout.strip() == "42", summed.stderr
        echoed = call("echo_input", "--stream", "--input", "/dev/null")
        assert echoed.returncode == 0 and echoed.stdout.startswith("[0 final] null"), echoed.stderr
        missing = call("sum_input")
        assert "sum_input reads an input stream: give it with --input FILE" in missing.stderr, missing.stderr
        # an error's details (the exception's public fields) are printed, traceback only with -v
        quota = call("quota", "--args", '{"retry_after": 2.5}')
        assert 'details: {"retry_after": 2.5, "limit": 100}' in quota.stderr, quota.stderr
        assert "Traceback" not in quota.stderr and "Traceback" in call("quota", "-v").stderr


def test_the_cli_finds_the_token_in_its_flag_then_krait_token_then_krait_token_file(tmp_path: Path) -> None:
    token = os.environ["KRAIT_TOKEN"]  # the worker's (the session's)
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(token + "\n")
    wrong.write_text("not-the-token\n")
    with running_worker() as worker:
        target = ("--target", worker.target)
        assert _cli("tools", *target, env={"KRAIT_TOKEN": None, "KRAIT_TOKEN_FILE": str(right)}).returncode == 0
        # $KRAIT_TOKEN before $KRAIT_TOKEN_FILE, --token-file before both
        assert _cli("tools", *target, env={"KRAIT_TOKEN": token, "KRAIT_TOKEN_FILE": str(wrong)}).returncode == 0
        flagged = _cli("tools", *target, "--token-file", str(right), env={"KRAIT_TOKEN": "not-the-token"})
        assert flagged.returncode == 0, flagged.stderr
        refused = _cli("call", "add", *target, "--args", '{"a": 1, "b": 2}', env={"KRAIT_TOKEN": None})
        assert refused.returncode == 1 and "error (UNAUTHENTICATED)" in refused.stderr
        missing = _cli("tools", *target, env={"KRAIT_TOKEN": None, "KRAIT_TOKEN_FILE": str(tmp_path / "nope")})
        assert missing.returncode == 2 and "cannot read the token file" in missing.stderr
        assert "Traceback" not in refused.stderr + missing.stderr


def test_serve_refuses_an_unusable_allowed_hosts_list() -> None:
    bad = _cli("serve", "--adapter", "adapters.showcase:ShowcaseAdapter", "--allowed-hosts", "a,,b", env={})
    assert bad.returncode == 2
    assert "--allowed-hosts: expected host names separated by commas (or '*'), got 'a,,b'" in bad.stderr
