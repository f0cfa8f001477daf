"""A client generated from proto/ alone, as a user of another language would build one.

The foreign client runs in its own process with nothing but its freshly generated stubs (the worker's own
stubs define the same protobuf symbols and may not share a process with them).
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grpc_tools import protoc

from .workers import ROOT

CLIENT = textwrap.dedent(
    """
    import json, os, sys
    import grpc
    from google.rpc import status_pb2
    from krait.v1 import worker_pb2 as pb, worker_pb2_grpc as pb_grpc

    target, tool, args, rpc = sys.argv[1:5]
    stub = pb_grpc.ToolWorkerStub(grpc.insecure_channel(target))
    request = pb.ExecuteToolRequest(tool_name=tool, args_json=args)
    auth = [("authorization", "Bearer " + os.environ["KRAIT_TOKEN"])]  # the worker's token, as a deployment passes it
    def chunk(c):
        return {"seq": c.seq, "data": c.data.decode(), "content_type": c.content_type, "is_final": c.is_final,
                "metadata": dict(c.metadata)}
    try:
        if rpc == "stream":
            out = [chunk(c) for c in stub.ExecuteStreamingTool(request, timeout=10, metadata=auth)]
        elif rpc == "batched":
            batches = stub.ExecuteStreamingToolBatched(request, timeout=10, metadata=auth)
            out = [[chunk(c) for c in b.chunks] for b in batches]
        else:
            r = stub.ExecuteTool(request, timeout=10, metadata=auth)
            out = {"data": r.data.decode(), "content_type": r.content_type, "metadata": dict(r.metadata)}
    except grpc.RpcError as e:
        status = status_pb2.Status.FromString(dict(e.trailing_metadata())["grpc-status-details-bin"])
        err = pb.ToolError()
        assert status.details[0].type_url == "type.googleapis.com/krait.v1.ToolError"
        status.details[0].Unpack(err)
        out = {"code": e.code().name, "details": e.details(), "type": err.type, "message": err.message,
               "traceback": err.traceback, "tool_name": err.tool_name}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def foreign_client(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("foreign")
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / "proto/krait/v1/worker.proto"),
    ]
    assert protoc.main(args) == 0
    (out / "client.py").write_text(CLIENT)

    def call(target: str, tool: str, args: str, rpc: str):
        result = subprocess.run(
            [sys.executable, str(out / "client.py"), target, tool, args, rpc],
            cwd=out,
            env={**os.environ, "PYTHONPATH": str(out)},
            capture_output=True,
            timeout=60,
            check=True,
        )
        return json.loads(result.stdout)

    return call


def test_generated_client_streams_progress(worker, foreign_client) -> None:
    chunks = foreign_client(worker.target, "stream_progress", '{"steps": 3}', "stream")
    assert len(chunks) == 4
    assert [json.loads(c["data"])["step"] for c in chunks[:3]] == [1, 2, 3]
    assert all(c["content_type"] == "application/json" and not c["is_final"] for c in chunks[:3])
    final = chunks[3]
    assert final["is_final"] and final["seq"] == 3
    assert final["metadata"]["synthetic_final"] == "true"
    assert final["metadata"]["tool_type"] == "remote"
    assert final["metadata"]["worker_id"] == "test-worker"
    assert final["metadata"]["execution_time_ms"].isdigit()


def test_generated_client_batched_stream_matches(worker, foreign_client) -> None:
    plain = foreign_client(worker.target, "stream_numbers", '{"count": 500}', "stream")
    batches = foreign_client(worker.target, "stream_numbers", '{"count": 500}', "batched")
    flattened = [c for batch in batches for c in batch]
    for final in (flattened[-1], plain[-1]):  # two calls, two timings
        assert final["metadata"].pop("execution_time_ms").isdigit()
    assert flattened == plain
    assert len(batches) < len(flattened)  # many chunks per message when the producer is fast


def test_generated_client_unary_and_structured_errors(worker, foreign_client) -> None:
    result = foreign_client(worker.target, "add", '{"a": 2, "b": 3}', "unary")
    assert json.loads(result["data"]) == 5 and result["metadata"]["tool_type"] == "remote"
    error = foreign_client(worker.target, "fail", '{"message": "boom"}', "unary")
    assert (error["code"], error["details"]) == ("UNKNOWN", "ValueError: boom")
    assert (error["type"], error["message"], error["tool_name"]) == ("ValueError", "boom", "fail")
    assert "raise ValueError(message)" in error["traceback"]


def test_generated_stubs_are_not_stale(tmp_path: Path) -> None:
    """python_worker/_generated must be exactly what grpc_tools makes of proto/ today."""
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-Ipython_worker/_generated=proto",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        "proto/krait/v1/worker.proto",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=60)
    fresh = tmp_path / "python_worker/_generated/krait/v1"
    current = ROOT / "python_worker/_generated/krait/v1"
    names = ["worker_pb2.py", "worker_pb2_grpc.py", "worker_pb2.pyi"]
    _, mismatch, errors = filecmp.cmpfiles(fresh, current, names, shallow=False)
    assert mismatch == [] and errors == [], f"stale stubs: run scripts/gen-proto ({mismatch + errors})"
