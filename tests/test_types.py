"""One truth for arguments and results, through a real worker: what ListTools advertises is what validation
accepts, every result type arrives in its documented form, and an exception's fields reach the caller."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import numpy as np
import pandas as pd
import pytest

from python_worker.client import Client, InvalidArgumentsError, ToolError, build_request
from python_worker.proto import pb, pb_grpc

from .support import insecure_channel
from .workers import Worker, running_worker

GOOD: dict[str, Any] = {
    "color": "red",
    "point": {"x": 1},
    "box": {"width": 2, "label": "b"},
    "order": {"item": "tea", "quantity": 1},
    "when": "2024-01-02T03:04:05+02:00",
    "day": "2024-01-02",
    "ident": "12345678-1234-5678-1234-567812345678",
    "amount": "1.10",
    "mode": "fast",
    "level": 10,
    "boxes": [{"width": 2.5, "label": "c"}],
}

# (argument, value, what the worker says): each refused by the advertised schema too
REFUSED_BY_BOTH = [
    ("color", "blue", "argument 'color': Input should be 'red' or 'green' (got 'blue')"),
    ("color", "RED", "argument 'color': Input should be 'red' or 'green'"),
    ("point", {"x": "1"}, "argument 'point'['x']: Input should be a valid integer (got '1')"),
    ("point", {"x": 1, "z": 2}, "argument 'point'['z']: unknown field"),
    ("point", [1, 2], "argument 'point': Input should be an object"),
    ("box", {"width": 1}, "argument 'box'['label']: Field required"),
    ("box", {"width": "1", "label": "b"}, "argument 'box'['width']: Input should be a valid number"),
    ("boxes", [{"width": 1, "label": 2}], "argument 'boxes'[0]['label']: Input should be a valid string"),
    ("order", {"item": "tea", "quantity": 0}, "argument 'order'['quantity']: Input should be greater than or equal"),
    ("when", 1704157445, "argument 'when': Input should be a valid datetime"),
    ("mode", "slow", "argument 'mode': Input should be 'fast' or 'exact' (got 'slow')"),
    ("level", 11, "argument 'level': Input should be less than or equal to 10 (got 11)"),
    ("level", "3", "argument 'level': Input should be a valid integer (got '3')"),
    ("level", 3.5, "argument 'level': Input should be a valid integer"),
    ("level", True, "argument 'level': Input should be a valid integer (got True)"),
    ("ratio", "0.5", "argument 'ratio': Input should be a valid number (got '0.5')"),
]
# refused by validation where the schema's "format" says so (JSON Schema does not assert formats by default)
REFUSED_BY_FORMAT = [
    ("when", "yesterday", "argument 'when': Input should be a valid datetime"),
    ("day", "2024-13-01", "argument 'day': Input should be a valid date"),
    ("ident", "not-a-uuid", "argument 'ident': Input should be a valid UUID"),
    ("amount", "a lot", "argument 'amount': Input should be a valid decimal"),
]


@pytest.fixture(scope="module")
def modern() -> Iterator[Worker]:
    with running_worker("tests.fixtures.modern:ModernAdapter") as worker:
        yield worker


@pytest.fixture(scope="module")
def client(modern: Worker) -> Iterator[Client]:
    with Client(modern.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def tools(client: Client) -> dict[str, Any]:
    return {t.name: t for t in client.list_tools()}


def _params(tools: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(tools[name].parameters_schema_json)
    return schema


def _result(tools: dict[str, Any], name: str) -> dict[str, Any] | None:
    text = tools[name].result_schema_json
    return json.loads(text) if text else None


def test_the_schema_advertises_json_forms(tools: dict[str, Any]) -> None:
    schema = _params(tools, "describe")
    props, defs = schema["properties"], schema["$defs"]
    assert defs["Color"]["enum"] == ["red", "green"]
    assert defs["Point"]["type"] == "object" and defs["Point"]["required"] == ["x"]
    assert defs["Box"]["required"] == ["width", "label"]
    assert props["when"]["format"] == "date-time" and props["day"]["format"] == "date"
    assert props["ident"]["format"] == "uuid"
    assert props["mode"]["enum"] == ["fast", "exact"]
    assert (props["level"]["minimum"], props["level"]["maximum"]) == (0, 10)
    # docstring sections become descriptions: Google style here, NumPy style in numpy_doc
    assert props["color"]["description"] == "a colour, by value"
    assert props["point"]["description"] == "a point; y defaults to 0"
    assert _params(tools, "numpy_doc")["properties"]["alpha"]["description"] == "the factor, NumPy style"


def test_every_advertised_form_is_accepted(client: Client, tools: dict[str, Any]) -> None:
    jsonschema.validate(GOOD, _params(tools, "describe"))
    got = client.call("describe", GOOD)
    assert got == {
        "color": "<Color.RED: 'red'>",
        "point": "Point(x=1, y=0)",
        "box": {"width": 2.0, "label": "b"},
        "order": "Order(item='tea', quantity=1)",
        "when": "2024-01-02T03:04:05+02:00",
        "day": "datetime.date(2024, 1, 2)",
        "ident": "UUID('12345678-1234-5678-1234-567812345678')",
        "amount": "Decimal('1.10')",
        "mode": "fast",
        "level": 10,
        "ratio": "0.5",
        "boxes": [{"width": 2.5, "label": "c"}],
    }
    # an int is a valid float, and every value of a Decimal's string survives
    got = client.call("describe", {**GOOD, "ratio": 1, "amount": "0.1000000000000000000001"})
    assert got["ratio"] == "1.0" and got["amount"] == "Decimal('0.1000000000000000000001')"


@pytest.mark.parametrize(("name", "value", "message"), REFUSED_BY_BOTH)
def test_what_the_schema_refuses_is_refused(
    client: Client, tools: dict[str, Any], name: str, value: Any, message: str
) -> None:
    args = {**GOOD, name: value}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(args, _params(tools, "describe"))
    with pytest.raises(InvalidArgumentsError) as info:
        client.call("describe", args)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message


@pytest.mark.parametrize(("name", "value", "message"), REFUSED_BY_FORMAT)
def test_values_outside_a_format_are_refused(client: Client, name: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentsError) as info:
        client.call("describe", {**GOOD, name: value})
    assert message in info.value.message


def test_result_schemas_come_from_return_annotations(tools: dict[str, Any]) -> None:
    order = _result(tools, "order")
    assert order is not None and order["$ref"] == "#/$defs/Order"
    assert order["$defs"]["Order"]["required"] == ["item", "quantity"]
    assert _result(tools, "price") == {"type": "string"}
    assert _result(tools, "add") == {"type": "number"}
    assert _result(tools, "scalar") == {"type": "number"}
    assert _result(tools, "matrix") == {
        "type": "string",
        "contentMediaType": "application/x-npy",
        "x-krait-binary": True,
    }
    assert _result(tools, "frame") == {
        "type": "string",
        "contentMediaType": "application/vnd.apache.arrow.stream",
        "x-krait-binary": True,
    }
    # streams describe each chunk's data: the yield type, StreamChunk[T] unwrapped
    ticks = _result(tools, "ticks")
    assert ticks is not None and ticks["$ref"] == "#/$defs/Tick"
    points = _result(tools, "points")
    assert points is not None and points["$defs"]["Point"]["required"] == ["x", "y"]
    assert _result(tools, "quota") == {"type": "null"}
    assert tools["events"].result_schema_json != ""  # dict[str, Any] is still an object


def test_results_arrive_in_their_documented_form(client: Client, tools: dict[str, Any]) -> None:
    assert client.execute("order") == {"item": "tea", "quantity": 2}
    assert client.execute("point") == {"x": 3, "y": 4}
    assert client.execute("price") == "12.50"  # a Decimal is its exact digits, as a string
    assert client.execute("moments") == {
        "when": "2024-05-17T12:30:00+00:00",
        "day": "2024-05-17",
        "ident": "00000000-0000-0000-0000-000000000001",
        "color": "green",
        "amounts": ["0.1000000000000000000001"],
    }
    assert client.execute("scalars") == {"f32": 1.5, "i64": 2**40, "b": True, "u8": 255}
    assert client.execute("scalar") == 0.25
    matrix = client.execute("matrix", rows=3)
    assert matrix.dtype == np.float32 and matrix.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    for name in ("order", "point", "price", "moments"):
        jsonschema.validate(client.execute(name), _result(tools, name) or {})


def test_a_dataframe_travels_as_arrow(client: Client) -> None:
    response = client.call_raw("frame")
    assert response.content_type == "application/vnd.apache.arrow.stream"
    frame = client.execute("frame")
    expected = pd.DataFrame(
        {"name": ["a", "b", "c"], "value": [1.5, 2.5, None], "count": np.array([1, 2, 3], dtype=np.int64)},
        index=pd.Index([10, 20, 30], name="id"),
    )
    pd.testing.assert_frame_equal(frame, expected)


def test_streamed_items_use_the_same_forms(client: Client) -> None:
    assert [c.data for c in client.execute_stream("points", n=3)][:-1] == [
        {"x": 0, "y": 0},
        {"x": 1, "y": 1},
        {"x": 2, "y": 4},
    ]


def test_custom_exception_fields_reach_the_caller(client: Client) -> None:
    with pytest.raises(ToolError) as info:
        client.execute("quota", retry_after=2.5)
    assert info.value.type == "QuotaExceeded"
    assert info.value.details == {"retry_after": 2.5, "limit": 100}  # _internal is not public
    with pytest.raises(ToolError) as info:
        client.execute("declared")
    assert info.value.details == {"code": "E42", "when": "2024-05-17"}  # its details mapping, JSON forms
    with pytest.raises(ToolError) as info:
        client.execute("odd_fields")
    assert info.value.details["handle"].startswith("<object object at")  # not JSON: its repr
    with pytest.raises(ToolError) as info:
        client.execute("huge_fields")
    assert "exceed the limit of 1500" in info.value.details["krait.details_omitted"]
    with pytest.raises(ToolError) as info:
        client.execute("plain_error")
    assert info.value.details == {}


def test_binary_values_for_json_parameters_are_refused(modern: Worker) -> None:
    with insecure_channel(modern.target) as channel:
        stub = pb_grpc.ToolWorkerStub(channel)
        for name, message in [
            ("ratio", "argument 'ratio' takes JSON, not a binary argument"),
            ("nope", "unknown argument 'nope' (describe takes: color"),
        ]:
            request = build_request("describe", {**GOOD, name: np.zeros(2)}, "", None)
            assert isinstance(request, pb.ExecuteToolRequest)
            with pytest.raises(grpc.RpcError) as info:
                stub.ExecuteTool(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (info.value.details() or "")
