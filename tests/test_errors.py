"""Bad input gets a clear status naming what is wrong, and the worker keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from python_worker.client import Client, InvalidArgumentsError, KraitError, ToolError, ToolNotFoundError
from python_worker.proto import pb, pb_grpc

from .support import insecure_channel
from .workers import running_worker


def _still_serving(client: Client) -> None:
    assert client.execute("add", a=2, b=3) == 5


def test_python_exception_carries_type_message_and_traceback(client: Client) -> None:
    with pytest.raises(ToolError) as info:
        client.execute("fail", message="epochs must be > 0")
    error = info.value
    assert error.code == grpc.StatusCode.UNKNOWN
    assert str(error) == "ValueError: epochs must be > 0"
    assert error.type == "ValueError"
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "adapters/showcase/adapter.py" in error.traceback and "in fail" in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: epochs must be > 0")
    _still_serving(client)


def test_unknown_tool(client: Client) -> None:
    with pytest.raises(ToolNotFoundError, match="unknown tool 'nope'; this worker serves: aask, acount_input, add, "):
        client.execute("nope")
    _still_serving(client)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"a": 1}, "add: missing required argument 'b'"),
        ({"a": 1, "b": "2"}, "add: argument 'b': Input should be a valid number (got '2')"),
        ({"a": 1, "b": 2, "c": 3}, "add: unknown argument 'c' (add takes: a, b)"),
        ({"a": True, "b": 2}, "add: argument 'a': Input should be a valid number (got True)"),
    ],
)
def test_argument_validation_names_the_argument(client: Client, args: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentsError) as info:
        client.call("add", args)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message
    _still_serving(client)


def test_nested_argument_types_are_checked(client: Client) -> None:
    with pytest.raises(InvalidArgumentsError, match=r"argument 'punctuation'\[1\]: Input should be a valid string"):
        client.call("greet", {"name": "x", "punctuation": ["!", 3]})


def test_array_argument_must_be_binary(client: Client) -> None:
    with pytest.raises(InvalidArgumentsError, match="argument 'values'"):
        client.call("array_stats", {"values": [1, 2, 3]})


def _raw_call(worker_target: str, request: pb.ExecuteToolRequest) -> grpc.RpcError:
    with insecure_channel(worker_target) as channel:
        stub = pb_grpc.ToolWorkerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ExecuteTool(request, timeout=10)
    return info.value


def test_malformed_json(worker, client: Client) -> None:
    error = _raw_call(worker.target, pb.ExecuteToolRequest(tool_name="add", args_json='{"a": 1,'))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("ArgumentError: add: args_json is not valid JSON")
    error = _raw_call(worker.target, pb.ExecuteToolRequest(tool_name="add", args_json="[1, 2]"))
    assert error.details() == "ArgumentError: add: args_json must be a JSON object, got list"
    _still_serving(client)


def test_bad_binary_argument(worker, client: Client) -> None:
    blob = pb.Blob(data=b"not npy at all", content_type="application/x-npy")
    error = _raw_call(worker.target, pb.ExecuteToolRequest(tool_name="array_stats", binary_args={"values": blob}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "binary argument 'values': not a valid .npy payload" in error.details()
    blob = pb.Blob(data=b"xx", content_type="image/png")
    error = _raw_call(worker.target, pb.ExecuteToolRequest(tool_name="reverse_bytes", binary_args={"blob": blob}))
    assert "has content type 'image/png'" in error.details()
    _still_serving(client)


def test_streaming_tool_through_unary_rpc_and_the_reverse(worker, client: Client) -> None:
    with pytest.raises(KraitError) as info:
        client.execute("stream_progress", steps=2)
    # the Python client names its own methods; the worker's status names the gRPC methods (for any client)
    assert (info.value.code, info.value.type) == (grpc.StatusCode.FAILED_PRECONDITION, "WrongRpc")
    assert info.value.message == (
        "WrongRpc: stream_progress is a streaming tool: use Client.execute_stream() or Client.stream()"
    )
    with pytest.raises(KraitError) as info:
        list(client.execute_stream("add", a=1, b=2))
    assert (info.value.code, info.value.type) == (grpc.StatusCode.FAILED_PRECONDITION, "WrongRpc")
    assert info.value.message == "WrongRpc: add is not a streaming tool: use Client.execute() or Client.call()"
    error = _raw_call(worker.target, pb.ExecuteToolRequest(tool_name="stream_progress"))
    assert error.details() == "WrongRpc: stream_progress is a streaming tool: call it with ExecuteStreamingTool"
    _still_serving(client)


def test_oversized_messages_both_ways() -> None:
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", "--max-message-mb", "1") as worker,
        Client(worker.target, timeout=20) as client,
    ):
        # a request larger than the worker accepts
        with pytest.raises(KraitError) as info:
            client.execute("array_stats", values=np.zeros(2 << 20, dtype=np.uint8))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a chunk larger than the worker may send: a clear error, not a broken stream
        with pytest.raises(KraitError) as info:
            list(client.execute_stream("stream_arrays", batches=1, batch_rows=1024, cols=1024))
        assert "more than the worker's maximum message size" in info.value.message
        assert info.value.type == "ChunkTooLarge"
        _still_serving(client)


@pytest.mark.parametrize("char", ["m", "\N{EURO SIGN}"])
def test_huge_error_messages_are_clipped_to_fit_the_trailers(client: Client, char: str) -> None:
    # grpcio clients refuse trailers over 8-16 KiB: the worker keeps the status within them, whatever the text
    with pytest.raises(ToolError) as info:
        client.execute("fail", message=char * 48_000)
    assert info.value.code == grpc.StatusCode.UNKNOWN
    assert info.value.message.startswith(f"ValueError: {char * 100}")
    assert info.value.message.endswith("... (48000 characters)")
    assert info.value.traceback.startswith("... (") and "characters of traceback omitted" in info.value.traceback
    _still_serving(client)
