"""A Node.js client built from proto/ alone (tests/node/client.js: @grpc/grpc-js, @grpc/proto-loader, protobufjs)
against a real worker: it streams, cancels, decodes a ToolError with its details, and reads a big integer.

The set-up installs Node.js (apt, where missing) and the npm packages into tests/node/node_modules.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import google.rpc

from .workers import ROOT, Worker

NODE_DIR = ROOT / "tests" / "node"


def _node(worker: Worker, mode: str) -> Any:
    node = shutil.which("node")
    assert node is not None and (NODE_DIR / "node_modules").is_dir(), "run scripts/setup: it installs Node.js"
    result = subprocess.run(
        [node, str(NODE_DIR / "client.js"), worker.target, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_node_client_streams(worker: Worker) -> None:
    out = _node(worker, "stream")
    chunks = out["chunks"]
    assert [c["data"]["step"] for c in chunks[:-1]] == [1, 2, 3]
    assert [c["seq"] for c in chunks] == ["0", "1", "2", "3"]  # uint64 read as strings: exact
    assert chunks[-1]["is_final"] and chunks[-1]["metadata"]["synthetic_final"] == "true"


def test_node_client_cancels(worker: Worker) -> None:
    out = _node(worker, "cancel")
    assert out["cancelled"] and [c["data"] for c in out["chunks"]] == [{"tick": 0}]
    assert "cancel_seen" in out["events"] and "finally" in out["events"]  # the tool saw it and cleaned up


def test_node_client_decodes_tool_errors(worker: Worker) -> None:
    out = _node(worker, "error")
    assert out["code"] == 2  # UNKNOWN: the tool raised
    error = out["error"]
    assert error["type"] == "QuotaExceeded" and error["toolName"] == "quota"
    assert error["details"] == {"retry_after": 2.5, "limit": 100}
    assert "raise QuotaExceeded" in error["traceback"]


def test_node_client_reads_big_integers_exactly(worker: Worker) -> None:
    out = _node(worker, "bigint")
    assert out["exact"] == str(2**64 + 1)
    assert out["lossy"] != 2**64 + 1  # what JSON.parse alone gives: why docs/reference.md says to use BigInt


def test_shipped_status_proto_is_the_published_one() -> None:
    # proto/google/rpc/status.proto is googleapis' file as googleapis-common-protos (a grpcio-status dependency)
    # publishes it; scripts/setup refreshes the copy when that package changes it
    published = Path(next(iter(google.rpc.__path__))) / "status.proto"
    assert filecmp.cmp(ROOT / "proto" / "google" / "rpc" / "status.proto", published, shallow=False)
