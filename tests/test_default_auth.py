"""Secure by default on a shared machine: a ``serve`` started with no token at all (no ``--token-file``, no
``$KRAIT_TOKEN``) makes one, and another local user (``nobody``, through ``runuser``) is refused on every TCP
listener: gRPC, HTTP and metrics. The attacker is plain socket code run by the system's python3 (``nobody`` cannot
run the venv's interpreter, which lives under /root): it needs no Krait code, only the wire. The same attacker given
the token gets through (the probe can see success), and root's own client reads the token from the ready file.
The ready file sits in a directory every user may write, where ``nobody`` has planted symlinks at its name and at
its old temporary name: neither is written through.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from python_worker.client import Client

from .workers import ROOT, running_worker, spawn

SYSTEM_PYTHON = "/usr/bin/python3"

# The attacker: one raw gRPC call over HTTP/2 (preface, SETTINGS, a HEADERS frame of literal HPACK fields, one DATA
# frame), one HTTP/1.1 request to the HTTP front, one to the metrics port; prints what each answered, as JSON.
ATTACKER = r"""
import http.client, json, socket, struct, sys

grpc_port, http_port, metrics_port, csv_path, token = sys.argv[1:6]
auth = [(b"authorization", b"Bearer " + token.encode())] if token else []

def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def field(name, value):  # a literal field without indexing, new name, no Huffman
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

def pb_string(number, text):
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data

def grpc(path, message):
    sock = socket.create_connection(("127.0.0.1", int(grpc_port)), timeout=15)
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"127.0.0.1"),
               (b"content-type", b"application/grpc"), (b"te", b"trailers"), *auth]
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
                 + frame(1, 4, 1, b"".join(field(n, v) for n, v in headers))
                 + frame(0, 1, 1, b"\x00" + struct.pack(">I", len(message)) + message))
    buffer, status, data = b"", None, b""
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            more = sock.recv(65536)
            if not more:
                return status, data
            buffer += more
        size = int.from_bytes(buffer[:3], "big")
        kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload, buffer = buffer[9 : 9 + size], buffer[9 + size :]
        if kind == 4 and not flags & 1:
            sock.sendall(frame(4, 1, 0, b""))
        elif kind == 6 and not flags & 1:
            sock.sendall(frame(6, 1, 0, payload))
        elif kind == 0 and stream == 1:
            data += payload
        elif kind == 1 and stream == 1:
            at = payload.find(b"grpc-status")
            if at >= 0:  # on a fresh connection grpc-core sends it as a literal (its length, then the digits)
                length = payload[at + 11] & 0x7F
                status = int(payload[at + 12 : at + 12 + length])
            if flags & 1:
                sock.close()
                return status, data
        elif kind in (3, 7):
            sock.close()
            return status, data

def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=15)
    headers = {"Content-Type": "application/json", **{n.decode(): v.decode() for n, v in auth}}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read().decode(errors="replace")

args = json.dumps({"path": csv_path})
listed, _ = grpc(b"/krait.v1.ToolWorker/ListTools", b"")
streamed, data = grpc(b"/krait.v1.ToolWorker/ExecuteStreamingTool",
                      pb_string(1, "stream_file") + pb_string(3, args))
http_status, http_body = request(http_port, "POST", "/v1/tools/stream_file/stream", args)
metrics_status, metrics_body = request(metrics_port, "GET", "/metrics")
print(json.dumps({
    "list_tools": listed, "stream_file": streamed, "grpc_read": "root_only_column" in data.decode(errors="replace"),
    "http": http_status, "http_read": "root_only_column" in http_body,
    "metrics": metrics_status, "metrics_read": "krait_tool_calls" in metrics_body,
}))
"""


def _as_nobody(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *cmd], cwd="/", capture_output=True, text=True, timeout=timeout
    )


def _attack(worker_info: dict, csv: Path, token: str = "") -> dict:
    ports = [str(worker_info[key]) for key in ("port", "http_port", "metrics_port")]
    run = _as_nobody(SYSTEM_PYTHON, "-c", ATTACKER, *ports, str(csv), token)
    assert run.returncode == 0, run.stderr
    answer: dict = json.loads(run.stdout)
    return answer


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every local user may write (a shared project or scratch directory), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test runs the attacker as a second Unix user with runuser -u nobody")
    if not shutil.which("runuser") or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs runuser and {SYSTEM_PYTHON} for the second user")
    if _as_nobody(SYSTEM_PYTHON, "-c", "print('ok')").stdout.strip() != "ok":
        pytest.skip(f"user nobody cannot run {SYSTEM_PYTHON}")
    path = Path(tempfile.mkdtemp(prefix="krait-shared-"))
    try:
        path.chmod(0o777)  # not sticky: the kernel's protected_symlinks does not help here
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root_only_csv() -> Iterator[Path]:
    """A CSV only root may read (0600 in a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="krait-private-"))
    try:
        csv = path / "private.csv"
        csv.write_text("root_only_column,b\n1.5,2\n")
        csv.chmod(0o600)
        yield csv
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_another_local_user_is_refused_on_every_listener_of_a_default_serve(
    shared_dir: Path, root_only_csv: Path
) -> None:
    victim = shared_dir / "victim.txt"
    victim.write_text("root's file, untouched\n")
    victim.chmod(0o644)
    ready = shared_dir / "ready.json"
    for planted in (ready, shared_dir / "ready.json.tmp"):
        made = _as_nobody("ln", "-s", str(victim), str(planted))
        assert made.returncode == 0, made.stderr
        assert planted.is_symlink() and planted.lstat().st_uid != 0

    no_token = {"KRAIT_TOKEN": None, "KRAIT_TOKEN_FILE": None}
    args = ("--http-port", "0", "--metrics-port", "0", "--ready-file", str(ready))
    with running_worker("adapters.dataset:DatasetAdapter", *args, env=no_token) as worker:
        # the ready file: root's own regular file, 0600, the links' target untouched
        assert victim.read_text() == "root's file, untouched\n"
        info = ready.lstat()
        assert stat.S_ISREG(info.st_mode) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600
        token = json.loads(ready.read_text())["token"]
        assert token == worker.info["token"] and len(token) == 43  # 256 bits, URL-safe base64
        assert not [p.name for p in shared_dir.iterdir() if p.name.startswith(".ready.json.")]  # no temporary left

        refused = _attack(worker.info, root_only_csv)
        assert refused == {
            "list_tools": 16,  # UNAUTHENTICATED
            "stream_file": 16,
            "grpc_read": False,
            "http": 401,
            "http_read": False,
            "metrics": 401,
            "metrics_read": False,
        }
        # the same probe with the token reads the file: the refusals above are the token's doing
        assert _attack(worker.info, root_only_csv, token) == {
            "list_tools": 0,
            "stream_file": 0,
            "grpc_read": True,
            "http": 200,
            "http_read": True,
            "metrics": 200,
            "metrics_read": True,
        }

        # root's clients: the token from the ready file works; the session's other token does not
        with Client(worker.target, token=token, timeout=30) as client:
            assert "stream_file" in [t.name for t in client.list_tools()]
        with Client(worker.target, timeout=30) as client, pytest.raises(grpc.RpcError) as refused_call:
            client.list_tools()
        assert refused_call.value.code() == grpc.StatusCode.UNAUTHENTICATED
        cli = subprocess.run(
            [sys.executable, "-m", "python_worker", "tools", "--target", worker.target],
            cwd=ROOT,
            env={**os.environ, "KRAIT_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0 and "stream_file" in cli.stdout, cli.stderr


def test_no_auth_serves_without_a_token_and_a_token_beside_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # --no-auth, explicitly: no token is made, nothing announces one, a client without one is served
    monkeypatch.delenv("KRAIT_TOKEN")
    with running_worker("adapters.showcase:ShowcaseAdapter", "--no-auth") as worker:
        assert "token" not in worker.info
        with Client(worker.target, timeout=30) as client:
            assert client.execute("add", a=1, b=2) == 3
    monkeypatch.setenv("KRAIT_TOKEN", "a-token")
    process = spawn("adapters.showcase:ShowcaseAdapter", "--no-auth", "--stdin-watch", "off", stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 2
    assert b"--no-auth and a token (--token-file or $KRAIT_TOKEN) contradict each other" in stderr
    assert b"Traceback" not in stderr
