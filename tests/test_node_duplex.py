"""ExecuteToolDuplex from a Node.js client built from proto/ alone (tests/node/duplex_client.mjs: @grpc/grpc-js,
@grpc/proto-loader) against a real worker: it sends input within the worker's credit, reads credit, chunks and
results, and answers a handler call. The set-up installs Node.js and the npm packages (tests/node/node_modules).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from python_worker.engine.exchange import WINDOW_BYTES, WINDOW_ITEMS

from .workers import ROOT, Worker

NODE_DIR = ROOT / "tests" / "node"


def _node(worker: Worker, mode: str) -> Any:
    node = shutil.which("node")
    assert node is not None and (NODE_DIR / "node_modules").is_dir(), "run scripts/setup: it installs Node.js"
    result = subprocess.run(
        [node, str(NODE_DIR / "duplex_client.mjs"), worker.target, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_node_sends_input_within_the_credit(worker: Worker) -> None:
    out = _node(worker, "sum")
    assert out["result"] == sum(range(3000)) and out["sent"] == 3000
    # the first window, then credit given back as the tool read (3000 items need more than one window)
    assert out["credits"][0] == [WINDOW_ITEMS, WINDOW_BYTES] and len(out["credits"]) > 1
    assert sum(items for items, _ in out["credits"]) >= 3000


def test_node_reads_the_echoed_chunks(worker: Worker) -> None:
    out = _node(worker, "echo")
    assert out["chunks"] == ["a", {"b": 1}, [2, 3], None]  # None: the synthetic final chunk
    assert out["result"] is None


def test_node_answers_handler_calls(worker: Worker) -> None:
    out = _node(worker, "handler")
    assert out["handlerCalls"] == 3 and out["chunks"] == [0, 1, 4, None]
    assert out["credits"] == []  # ask_stream reads no input: no credit
