"""Malformed requests through a real worker: each gets the right status and one warning line, never a traceback.

Every request here goes to one showcase worker whose stderr is kept; the last test reads it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from python_worker.codec import encode_npy
from python_worker.errors import tool_error_from_rpc_error
from python_worker.proto import pb

from .support import insecure_channel
from .workers import Worker, running_worker

ADAPTER = "adapters.showcase:ShowcaseAdapter"
SERVICE = "/krait.v1.ToolWorker/"
EXECUTE_RPCS = ("ExecuteTool", "ExecuteStreamingTool", "ExecuteStreamingToolBatched")


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    error_type: str = ""


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Path]]:
    log = tmp_path_factory.mktemp("bad-input") / "worker.log"
    with log.open("wb") as sink, running_worker(ADAPTER, "--worker-id", "bad-input", stderr=sink) as worker:
        yield worker, log


@pytest.fixture(scope="module")
def channel(logged: tuple[Worker, Path]) -> Iterator[grpc.Channel]:
    with insecure_channel(logged[0].target) as ch:
        yield ch


def call(channel: grpc.Channel, rpc: str, body: bytes) -> Outcome:
    """Send ``body`` as the serialized request of ``rpc``, as any client could."""
    try:
        if rpc.startswith("ExecuteStreaming"):
            for _ in channel.unary_stream(SERVICE + rpc)(body, timeout=10):
                pass
        else:
            channel.unary_unary(SERVICE + rpc)(body, timeout=10)
    except grpc.RpcError as error:
        detail = tool_error_from_rpc_error(error)
        return Outcome(error.code(), error.details() or "", detail.type if detail else "")  # type: ignore[attr-defined]
    return Outcome(grpc.StatusCode.OK, "")


def with_bad_utf8(message: object, marker: str = "MARKER") -> bytes:
    """``message`` serialized, with the string ``marker`` (wherever it is) turned into invalid UTF-8."""
    data = message.SerializeToString()  # type: ignore[attr-defined]
    assert data.count(marker.encode()) == 1
    return data.replace(marker.encode(), b"MAR\xffKER")


@pytest.mark.parametrize("rpc", EXECUTE_RPCS)
@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ExecuteToolRequest(tool_name="MARKER"), "tool_name"),
        (pb.ExecuteToolRequest(tool_name="add", session_id="MARKER"), "session_id"),
        (pb.ExecuteToolRequest(tool_name="add", args_json='{"a": "MARKER"}'), "args_json"),
        (pb.ExecuteToolRequest(tool_name="add", metadata={"MARKER": "v"}), "metadata.key"),
        (pb.ExecuteToolRequest(tool_name="add", metadata={"k": "MARKER"}), "metadata.value"),
        (pb.ExecuteToolRequest(tool_name="add", binary_args={"MARKER": pb.Blob()}), "binary_args.key"),
        (
            pb.ExecuteToolRequest(tool_name="add", binary_args={"b": pb.Blob(content_type="MARKER")}),
            "binary_args.value.content_type",
        ),
    ],
)
def test_invalid_utf8_in_any_string_field_is_invalid_argument_naming_the_field(
    channel: grpc.Channel, rpc: str, request_: object, field: str
) -> None:
    outcome = call(channel, rpc, with_bad_utf8(request_))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details == f"ArgumentError: field {field} of krait.v1.ExecuteToolRequest is not valid UTF-8"


@pytest.mark.parametrize(
    ("rpc", "request_"),
    [
        ("Ping", pb.PingRequest(message="MARKER")),
        ("InitializeSession", pb.InitializeSessionRequest(session_id="MARKER")),
        ("InitializeSession", pb.InitializeSessionRequest(session_id="s", metadata={"k": "MARKER"})),
        ("CleanupSession", pb.CleanupSessionRequest(session_id="MARKER")),
    ],
)
def test_invalid_utf8_in_the_other_rpcs(channel: grpc.Channel, rpc: str, request_: object) -> None:
    outcome = call(channel, rpc, with_bad_utf8(request_))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not valid UTF-8" in outcome.details


def execute(tool: str, args_json: str = "", **fields: object) -> bytes:
    return pb.ExecuteToolRequest(tool_name=tool, args_json=args_json, **fields).SerializeToString()  # type: ignore[arg-type]


LONG_DIGITS = "1234567890123456789"


@pytest.mark.parametrize("extra", ["", f', "n": {LONG_DIGITS}'], ids=["plain", "with-a-19-digit-number"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_refused_the_same_way_every_time(channel: grpc.Channel, number: str, extra: str) -> None:
    # echo takes any value: nothing but the worker's own rule refuses these
    outcome = call(channel, "ExecuteTool", execute("echo", f'{{"value": [1, {number}]{extra}}}'))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details.startswith("ArgumentError: echo: argument 'value'[1]: not a finite number")


@pytest.mark.parametrize("extra", ["", LONG_DIGITS], ids=["plain", "with-a-19-digit-number"])
def test_json_nested_too_deep_is_invalid_argument(channel: grpc.Channel, extra: str) -> None:
    outcome = call(channel, "ExecuteTool", execute("echo", '{"value": ' + "[" * 3000 + extra + "]" * 3000 + "}"))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nesting is too deep" in outcome.details


def _npy(header: str) -> bytes:
    raw = header.encode("latin1")
    pad = 64 - (10 + len(raw) + 1) % 64
    return b"\x93NUMPY\x01\x00" + (len(raw) + pad + 1).to_bytes(2, "little") + raw + b" " * pad + b"\n" + b"\0" * 8


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 3000 + "}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (10**30,), }",
        "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
    ],
)
def test_malformed_npy_headers_are_invalid_argument(channel: grpc.Channel, header: str) -> None:
    blob = pb.Blob(data=_npy(header), content_type="application/x-npy")
    outcome = call(channel, "ExecuteTool", execute("array_stats", binary_args={"values": blob}))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ArgumentError: array_stats: binary argument 'values'" in outcome.details


@pytest.mark.parametrize("rpc", EXECUTE_RPCS)
def test_a_huge_tool_name_is_not_found_with_the_name_clipped(channel: grpc.Channel, rpc: str) -> None:
    name = "x" * (1 << 20)
    outcome = call(channel, rpc, execute(name))
    assert outcome.code == grpc.StatusCode.NOT_FOUND
    assert f"unknown tool '{'x' * 64}... (1048576 characters)'" in outcome.details
    assert len(outcome.details) < 2000


def test_a_huge_argument_name_gets_a_readable_invalid_argument(channel: grpc.Channel) -> None:
    outcome = call(channel, "ExecuteTool", execute("add", '{"a": 1, "b": 2, "' + "k" * (1 << 20) + '": 3}'))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown argument" in outcome.details and len(outcome.details) < 2000


@pytest.mark.parametrize(
    ("rpc", "body"),
    [
        *[(rpc, execute("add", '{"a": 1, "b": 2}', session_id="s" * 257)) for rpc in EXECUTE_RPCS],
        ("InitializeSession", pb.InitializeSessionRequest(session_id="s" * 257).SerializeToString()),
        ("CleanupSession", pb.CleanupSessionRequest(session_id="s" * 257).SerializeToString()),
        ("ExecuteTool", execute("add", '{"a": 1, "b": 2}', session_id="é" * 129)),  # 258 bytes in UTF-8
    ],
)
def test_session_ids_over_256_bytes_are_invalid_argument(channel: grpc.Channel, rpc: str, body: bytes) -> None:
    outcome = call(channel, rpc, body)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes long; at most 256 are allowed" in outcome.details


def test_a_256_byte_session_id_is_fine(channel: grpc.Channel) -> None:
    assert call(channel, "ExecuteTool", execute("session_counter", session_id="é" * 128)).code == grpc.StatusCode.OK


def _mutations(rng: random.Random, valid: list[bytes]) -> Iterator[bytes]:
    """Damaged requests: flipped bytes, cut messages, random bytes, garbage arguments."""
    junk = ["{", "[1, 2]", '{"a": }', '{"a": 1e999}', "\x00", '{"a": "\\ud800"}', '{"a": 1, "b": 2, "a": 3}']
    for _ in range(400):
        kind = rng.randrange(5)
        base = bytearray(rng.choice(valid))
        if kind == 0:  # flipped bytes
            for _ in range(rng.randint(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            yield bytes(base)
        elif kind == 1:  # cut short
            yield bytes(base[: rng.randrange(len(base))])
        elif kind == 2:  # random bytes
            yield rng.randbytes(rng.randint(1, 64))
        elif kind == 3:  # garbage arguments
            yield execute("add", rng.choice(junk) + rng.choice(["", "}", "]"]))
        else:  # garbage binary arguments
            data = bytearray(encode_npy(np.arange(4.0)))
            data[rng.randrange(len(data))] = rng.randrange(256)
            blob = pb.Blob(data=bytes(data), content_type=rng.choice(["application/x-npy", "image/png", ""]))
            yield execute("array_stats", binary_args={"values": blob})


def test_fuzzed_requests_get_a_proper_status(channel: grpc.Channel) -> None:
    rng = random.Random(8)
    valid = [
        execute("add", '{"a": 1, "b": 2}', session_id="fuzz", metadata={"k": "v"}),
        execute("stream_numbers", '{"count": 2}'),
        execute("array_stats", binary_args={"values": pb.Blob(data=encode_npy(np.arange(4.0)), content_type="")}),
    ]
    seen: dict[grpc.StatusCode, int] = {}
    for i, body in enumerate(_mutations(rng, valid)):
        outcome = call(channel, EXECUTE_RPCS[i % 3], body)
        # OK when the damage left a valid call; FAILED_PRECONDITION when it became a call through the wrong RPC
        assert outcome.code in {
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
        }, (body, outcome)
        assert len(outcome.details) < 2000
        seen[outcome.code] = seen.get(outcome.code, 0) + 1
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100  # the fuzzing reached the checks


def test_zz_the_log_has_one_warning_line_per_refusal_and_no_traceback(
    channel: grpc.Channel, logged: tuple[Worker, Path]
) -> None:
    # runs last in this module (pytest keeps file order): the log holds every refusal above
    assert call(channel, "ExecuteTool", execute("add", '{"a": 1, "b": 2}')).code == grpc.StatusCode.OK
    text = logged[1].read_text(errors="replace")
    assert "Traceback" not in text and "ERROR" not in text and "Exception" not in text
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert len(warnings) > 400
    assert all(" refused: " in line for line in warnings), [w for w in warnings if " refused: " not in w][:3]
    assert max(len(line) for line in warnings) < 2500
