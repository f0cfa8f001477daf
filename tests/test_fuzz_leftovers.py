"""Fuzzing leftovers through a real worker over gRPC: a float argument beyond a float's range, a result JSON
cannot hold (NaN, infinities: refused, never sent as null) and an .npy argument of a dtype no tool expects all
end with a clear status naming what is wrong, and never with a traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from python_worker.client import Client, KraitError
from python_worker.proto import pb

from .workers import Worker, running_worker

ADAPTER = "tests.fixtures.nonfinite:NonFiniteAdapter"


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with running_worker(ADAPTER) as w:
        yield w


@pytest.fixture
def client(worker: Worker) -> Iterator[Client]:
    with Client(worker.target, timeout=30) as c:
        yield c


def _refused(call, code: grpc.StatusCode, error_type: str, message: str) -> KraitError:
    with pytest.raises(KraitError) as info:
        call()
    error = info.value
    assert (error.code, error.type) == (code, error_type), error
    assert message in error.message, error.message
    assert not error.traceback, error.traceback  # a refusal, not a crash: no server paths either
    return error


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"a": 2**10000, "b": 1}, "argument 'a'"),  # an int far beyond a float (answered null before)
        ({"a": 1, "b": 2**1024}, "argument 'b'"),  # just beyond: pydantic would round it to inf
        ({"a": 1, "b": -(2**1024)}, "argument 'b'"),
    ],
)
def test_a_float_argument_beyond_a_float_is_invalid(client: Client, args: dict, named: str) -> None:
    _refused(
        lambda: client.execute("add", **args),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ArgumentError",
        f"add: {named}: a number beyond a float's range",
    )


def test_a_json_number_beyond_a_double_is_invalid(worker: Worker) -> None:
    # 1e400 in the JSON text itself (the Python client could not even write it): refused by the decoder
    with grpc.insecure_channel(worker.target) as channel:
        stub = channel.unary_unary("/krait.v1.ToolWorker/ExecuteTool")
        request = pb.ExecuteToolRequest(tool_name="add", args_json='{"a": 1e400, "b": 1}')
        token = os.environ.get("KRAIT_TOKEN", "")
        metadata = [("authorization", f"Bearer {token}")] if token else []
        with pytest.raises(grpc.RpcError) as info:
            stub(request.SerializeToString(), timeout=10, metadata=metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "argument 'a'" in info.value.details() and "not a finite number" in info.value.details()


def test_floats_within_range_still_add(client: Client) -> None:
    assert client.execute("add", a=2**1023, b=1) == pytest.approx(2.0**1023)
    assert client.execute("add", a=1.5, b=2) == 3.5


@pytest.mark.parametrize(
    ("number", "shape", "where"),
    [
        ("inf", "bare", "result is inf"),
        ("-inf", "nested", "result['scores'][1] is -inf"),
        ("nan", "array", "result['values'][1] is nan"),
    ],
)
def test_a_non_finite_result_is_refused_never_null(client: Client, number: str, shape: str, where: str) -> None:
    _refused(
        lambda: client.execute("non_finite", number=number, shape=shape),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ResultError",
        f"non_finite: {where}, not a finite number: JSON has no NaN or Infinity",
    )


def test_an_overflowing_sum_is_refused_not_null(client: Client) -> None:
    # both arguments are fine; their sum is not: the tool's result is refused, not sent as null
    _refused(
        lambda: client.execute("add", a=1e308, b=1e308),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ResultError",
        "add: result is inf",
    )


def test_a_non_finite_chunk_ends_the_stream_after_the_good_ones(client: Client) -> None:
    seen = []
    with pytest.raises(KraitError) as info:
        for chunk in client.stream("non_finite_stream", {"number": "nan", "shape": "nested"}):
            seen.append(chunk.data)
    assert seen == [{"i": 0}]
    assert (info.value.code, info.value.type) == (grpc.StatusCode.FAILED_PRECONDITION, "ResultError")
    assert "non_finite_stream: chunk 1['scores'][1] is nan" in info.value.message


def test_a_real_null_is_still_null(client: Client) -> None:
    assert client.execute("real_null") == {"value": None, "text": "null"}


@pytest.mark.parametrize(
    ("array", "named"),
    [
        (np.zeros(3, dtype="V4"), "dtype |V4 (void (raw bytes))"),
        (np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]), "dtype [('a', '<i4'), ('b', '<f8')] (structured records)"),
        (np.zeros(2, dtype=np.dtype((np.record, [("a", "<i4")]))), "(structured records)"),
    ],
    ids=["void", "structured", "record"],
)
def test_an_npy_argument_of_an_unsupported_dtype_is_invalid(client: Client, array: np.ndarray, named: str) -> None:
    _refused(
        lambda: client.execute("array_stats", values=array),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ArgumentError",
        f"{named} is not supported; send numbers, bools or strings",
    )


def test_supported_npy_dtypes_still_arrive(client: Client) -> None:
    assert client.execute("array_stats", values=np.arange(4, dtype=np.int16))["sum"] == 6
    assert client.execute("array_stats", values=np.array([True, False]))["sum"] == 1
