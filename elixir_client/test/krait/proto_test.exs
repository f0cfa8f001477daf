defmodule Krait.ProtoTest do
  @moduledoc """
  Protobuf codec: round trips, wire details, and interoperability with Python's protobuf
  (fixtures made at test time with the generated `worker_pb2`).
  """
  use ExUnit.Case, async: true

  import Bitwise

  alias Krait.Proto

  alias Krait.Proto.{
    Any,
    Blob,
    CleanupSessionRequest,
    CleanupSessionResponse,
    DecodeError,
    ExecuteToolRequest,
    ExecuteToolResponse,
    InitializeSessionRequest,
    InitializeSessionResponse,
    ListToolsRequest,
    ListToolsResponse,
    PingRequest,
    PingResponse,
    RpcStatus,
    ToolChunk,
    ToolChunkBatch,
    ToolError,
    ToolInfo
  }

  defp roundtrip(%module{} = message) do
    decoded = message |> module.encode() |> IO.iodata_to_binary() |> module.decode()
    assert decoded == message
  end

  describe "round trips" do
    test "every message" do
      roundtrip(%PingRequest{message: "hello"})

      roundtrip(%PingResponse{
        message: "m",
        worker_id: "w",
        adapter: "a:B",
        pid: 123,
        uptime_ms: 1 <<< 40
      })

      roundtrip(%PingResponse{pid: -5, uptime_ms: -(1 <<< 62)})
      roundtrip(%ListToolsRequest{})

      roundtrip(%ListToolsResponse{
        tools: [
          %ToolInfo{
            name: "a",
            description: "d",
            supports_streaming: true,
            parameters_schema_json: "{}"
          },
          %ToolInfo{name: "b"}
        ],
        worker_id: "w",
        adapter: "x:Y"
      })

      roundtrip(%InitializeSessionRequest{session_id: "s", metadata: %{"k" => "v", "e" => ""}})
      roundtrip(%InitializeSessionResponse{created: true})
      roundtrip(%CleanupSessionRequest{session_id: "s"})
      roundtrip(%CleanupSessionResponse{existed: true})

      roundtrip(%ExecuteToolRequest{
        tool_name: "t",
        session_id: "s",
        args_json: ~s({"a": 1}),
        metadata: %{"trace" => "1"},
        binary_args: %{
          "arr" => %Blob{data: <<0, 1, 2>>, content_type: "application/x-npy"},
          "empty" => %Blob{}
        }
      })

      roundtrip(%ExecuteToolResponse{
        data: "x",
        content_type: "text/plain",
        metadata: %{"a" => "b"}
      })

      roundtrip(%ToolChunk{
        seq: 1 <<< 40,
        data: :binary.copy("z", 300),
        content_type: "application/json",
        is_final: true,
        metadata: %{"m" => "1"}
      })

      roundtrip(%ToolChunkBatch{chunks: for(i <- 0..300, do: %ToolChunk{seq: i, data: "#{i}"})})

      roundtrip(%ToolError{
        type: "E",
        message: "m",
        traceback: "t",
        tool_name: "n",
        worker_id: "w"
      })

      roundtrip(%RpcStatus{code: -1, message: "m", details: [%Any{type_url: "u", value: "v"}]})
    end

    test "defaults are not encoded" do
      assert IO.iodata_to_binary(ToolChunk.encode(%ToolChunk{})) == ""
      assert IO.iodata_to_binary(PingResponse.encode(%PingResponse{})) == ""
    end
  end

  describe "wire details" do
    test "unknown fields of every wire type are skipped" do
      unknown = <<0xF8, 0x01, 0x05, 0xF9, 0x01, 0::64, 0xFA, 0x01, 2, "ab", 0xFD, 0x01, 0::32>>
      chunk = IO.iodata_to_binary(ToolChunk.encode(%ToolChunk{seq: 2, data: "d"}))
      assert %ToolChunk{seq: 2, data: "d"} = ToolChunk.decode(unknown <> chunk <> unknown)
      assert %PingRequest{message: "m"} = PingRequest.decode(unknown <> <<10, 1, "m">>)
    end

    test "packed varints are accepted for varint fields (last value wins)" do
      # seq sent as a packed field: key 0x0A (field 1, wire type 2), values 1 and 300.
      assert %ToolChunk{seq: 300} = ToolChunk.decode(<<0x0A, 3, 1, 0xAC, 0x02>>)
      assert %PingResponse{pid: 300} = PingResponse.decode(<<0x22, 3, 1, 0xAC, 0x02>>)

      assert %CleanupSessionResponse{existed: true} =
               CleanupSessionResponse.decode(<<0x0A, 1, 1>>)
    end

    test "later occurrences of a singular field win, map entries merge" do
      bin = <<8, 1, 8, 2, 0x2A, 6, 10, 1, "k", 18, 1, "a", 0x2A, 6, 10, 1, "k", 18, 1, "b">>
      assert %ToolChunk{seq: 2, metadata: %{"k" => "b"}} = ToolChunk.decode(bin)
    end

    test "long lengths and varints take the general path" do
      data = :binary.copy("q", 70_000)
      chunk = %ToolChunk{seq: 1 <<< 35, data: data, content_type: :binary.copy("c", 200)}
      roundtrip(chunk)
    end

    test "bytes fields are sub-binaries of the input: a 4 MiB chunk is not copied" do
      data = :crypto.strong_rand_bytes(4 * 1024 * 1024)
      bin = IO.iodata_to_binary(ToolChunk.encode(%ToolChunk{seq: 1, data: data}))
      chunk = ToolChunk.decode(bin)
      assert chunk.data == data
      assert :binary.referenced_byte_size(chunk.data) == byte_size(bin)
    end

    test "malformed input raises DecodeError" do
      assert_raise DecodeError, fn -> ToolChunk.decode(<<0x12, 10, "short">>) end
      assert_raise DecodeError, fn -> ToolChunkBatch.decode(<<0x0A, 0xFF>>) end
      assert_raise DecodeError, fn -> PingRequest.decode(<<0x0B>>) end
      assert_raise DecodeError, fn -> PingRequest.decode(<<0x08, 0xFF, 0xFF>>) end
    end
  end

  describe "status details" do
    test "tool_error_from_status_details finds the ToolError among the details" do
      error = %ToolError{type: "ValueError", message: "epochs must be > 0", tool_name: "train"}

      status = %RpcStatus{
        code: 3,
        message: "bad",
        details: [
          %Any{type_url: "type.googleapis.com/other.Thing", value: "x"},
          %Any{
            type_url: Proto.tool_error_type_url(),
            value: IO.iodata_to_binary(ToolError.encode(error))
          }
        ]
      }

      assert Proto.tool_error_from_status_details(IO.iodata_to_binary(RpcStatus.encode(status))) ==
               error

      assert Proto.tool_error_from_status_details(
               IO.iodata_to_binary(RpcStatus.encode(%RpcStatus{code: 2}))
             ) == nil

      assert Proto.tool_error_from_status_details(<<0xFF>>) == nil
      assert Proto.tool_error_from_status_details(nil) == nil
    end

    test "method paths" do
      assert Proto.path(:ping) == "/krait.v1.ToolWorker/Ping"

      assert Proto.path(:execute_streaming_tool_batched) ==
               "/krait.v1.ToolWorker/ExecuteStreamingToolBatched"
    end
  end

  # its speed is measured by scripts/bench, not asserted here
  test "a batch of 1000 small chunks decodes to the same chunks, in order" do
    chunks =
      for i <- 0..999,
          do: %ToolChunk{seq: i, data: ~s({"i": #{i}}), content_type: "application/json"}

    bin = IO.iodata_to_binary(ToolChunkBatch.encode(%ToolChunkBatch{chunks: chunks}))
    assert ToolChunkBatch.decode(bin).chunks == chunks
  end
end

defmodule Krait.ProtoPythonTest do
  @moduledoc """
  Interoperability with Python's protobuf: fixtures made at test time with the generated
  `worker_pb2`, and Elixir's encodings parsed back by Python.
  """
  use ExUnit.Case, async: true

  import Bitwise

  alias Krait.Proto

  alias Krait.Proto.{
    Any,
    Blob,
    ExecuteToolRequest,
    ExecuteToolResponse,
    InitializeSessionRequest,
    ListToolsResponse,
    PingResponse,
    RpcStatus,
    ToolChunk,
    ToolChunkBatch,
    ToolError,
    ToolInfo
  }

  alias Krait.Test.PythonWorker

  @moduletag :python
  @moduletag timeout: 60_000
  unless PythonWorker.available?(), do: @moduletag(skip: "the Python worker is not installed")

  @fixtures ~S"""
  import base64, json, sys
  from google.protobuf import any_pb2
  from google.rpc import status_pb2
  from python_worker._generated.krait.v1 import worker_pb2 as pb

  def enc(m):
      return base64.b64encode(m.SerializeToString()).decode()

  out = {}
  out["ping"] = enc(pb.PingResponse(message="hé", worker_id="w1", adapter="a:B", pid=4242, uptime_ms=2**40))
  out["negative"] = enc(pb.PingResponse(pid=-5))
  out["chunk"] = enc(pb.ToolChunk(seq=300, data=bytes(range(256)) * 3, content_type="application/octet-stream",
                                  is_final=True, metadata={"a": "1", "b": "2"}))
  out["batch"] = enc(pb.ToolChunkBatch(chunks=[
      pb.ToolChunk(seq=i, data=json.dumps({"number": i}).encode(), content_type="application/json",
                   is_final=i == 999, metadata={"worker_id": "w"} if i == 999 else {})
      for i in range(1000)]))
  out["big"] = enc(pb.ToolChunk(seq=1, data=b"\x07" * (4 * 1024 * 1024 + 3)))
  out["request"] = enc(pb.ExecuteToolRequest(
      tool_name="t", session_id="s", args_json='{"x": 1}', metadata={"k": "v"},
      binary_args={"arr": pb.Blob(data=b"\x93NUMPY", content_type="application/x-npy"), "b": pb.Blob()}))
  out["response"] = enc(pb.ExecuteToolResponse(data=b"42", content_type="application/json",
                                               metadata={"execution_time_ms": "3"}))
  out["tools"] = enc(pb.ListToolsResponse(tools=[
      pb.ToolInfo(name="echo", description="d", supports_streaming=False, parameters_schema_json="{}"),
      pb.ToolInfo(name="s", supports_streaming=True)], worker_id="w", adapter="m:C"))
  out["init"] = enc(pb.InitializeSessionRequest(session_id="s1", metadata={"user": "ann"}))
  te = pb.ToolError(type="ValueError", message="bad", traceback="tb", tool_name="fail", worker_id="w")
  a = any_pb2.Any()
  a.Pack(te)
  out["status"] = enc(status_pb2.Status(code=3, message="bad", details=[a]))

  # Messages encoded by Elixir, decoded here and described back as JSON.
  incoming = json.loads(sys.stdin.read())
  def parse(cls, b64):
      m = cls()
      m.ParseFromString(base64.b64decode(b64))
      return m
  req = parse(pb.ExecuteToolRequest, incoming["request"])
  chunk = parse(pb.ToolChunk, incoming["chunk"])
  batch = parse(pb.ToolChunkBatch, incoming["batch"])
  ping = parse(pb.PingResponse, incoming["ping"])
  st = parse(status_pb2.Status, incoming["status"])
  err = pb.ToolError()
  st.details[0].Unpack(err)
  out["parsed"] = {
      "request": [req.tool_name, req.session_id, req.args_json, dict(req.metadata),
                  {k: [base64.b64encode(v.data).decode(), v.content_type] for k, v in req.binary_args.items()}],
      "chunk": [chunk.seq, base64.b64encode(chunk.data).decode(), chunk.content_type, chunk.is_final, dict(chunk.metadata)],
      "batch": [[c.seq, c.data.decode()] for c in batch.chunks],
      "ping": [ping.message, ping.pid, ping.uptime_ms],
      "status": [st.code, st.message, st.details[0].type_url, err.type, err.message],
  }
  print(json.dumps(out))
  """

  defp b64(iodata), do: Base.encode64(IO.iodata_to_binary(iodata))

  defp run_python(input) do
    path = Path.join(System.tmp_dir!(), "krait-proto-#{System.unique_integer([:positive])}.json")

    File.write!(path, :jiffy.encode(input))

    try do
      {out, 0} =
        System.cmd(
          "/bin/sh",
          ["-c", ~s(exec "$0" -c "$1" < "$2"), PythonWorker.python(), @fixtures, path],
          cd: PythonWorker.repo()
        )

      :jiffy.decode(out, [:return_maps])
    after
      File.rm(path)
    end
  end

  setup_all do
    if PythonWorker.available?() do
      input = %{
        "request" =>
          b64(
            ExecuteToolRequest.encode(%ExecuteToolRequest{
              tool_name: "tool",
              session_id: "sess",
              args_json: ~s({"n": 5}),
              metadata: %{"trace" => "abc"},
              binary_args: %{
                "blob" => %Blob{data: <<0, 255, 1>>, content_type: "application/octet-stream"}
              }
            })
          ),
        "chunk" =>
          b64(
            ToolChunk.encode(%ToolChunk{
              seq: 1 <<< 33,
              data: <<1, 2, 3>>,
              content_type: "application/x-npy",
              is_final: true,
              metadata: %{"synthetic_final" => "true"}
            })
          ),
        "batch" =>
          b64(
            ToolChunkBatch.encode(%ToolChunkBatch{
              chunks: for(i <- 0..199, do: %ToolChunk{seq: i, data: "#{i}"})
            })
          ),
        "ping" =>
          b64(PingResponse.encode(%PingResponse{message: "ünï", pid: -7, uptime_ms: 1 <<< 50})),
        "status" =>
          b64(
            RpcStatus.encode(%RpcStatus{
              code: 9,
              message: "no",
              details: [
                %Any{
                  type_url: Proto.tool_error_type_url(),
                  value:
                    IO.iodata_to_binary(
                      ToolError.encode(%ToolError{type: "KeyError", message: "k"})
                    )
                }
              ]
            })
          )
      }

      {:ok, py: run_python(input)}
    else
      :ok
    end
  end

  test "Python's bytes decode to the same values", %{py: py} do
    bytes = fn key -> Base.decode64!(py[key]) end

    assert PingResponse.decode(bytes.("ping")) ==
             %PingResponse{
               message: "hé",
               worker_id: "w1",
               adapter: "a:B",
               pid: 4242,
               uptime_ms: 1 <<< 40
             }

    assert %PingResponse{pid: -5} = PingResponse.decode(bytes.("negative"))

    assert ToolChunk.decode(bytes.("chunk")) == %ToolChunk{
             seq: 300,
             data: :binary.copy(for(b <- 0..255, into: <<>>, do: <<b>>), 3),
             content_type: "application/octet-stream",
             is_final: true,
             metadata: %{"a" => "1", "b" => "2"}
           }

    chunks = ToolChunkBatch.decode(bytes.("batch")).chunks
    assert length(chunks) == 1000
    assert Enum.map(chunks, & &1.seq) == Enum.to_list(0..999)
    assert Enum.at(chunks, 7).data == ~s({"number": 7})
    assert %ToolChunk{is_final: true, metadata: %{"worker_id" => "w"}} = List.last(chunks)

    big_bytes = bytes.("big")
    big = ToolChunk.decode(big_bytes)
    assert byte_size(big.data) == 4 * 1024 * 1024 + 3
    assert :binary.referenced_byte_size(big.data) == byte_size(big_bytes)

    assert ExecuteToolRequest.decode(bytes.("request")) == %ExecuteToolRequest{
             tool_name: "t",
             session_id: "s",
             args_json: ~s({"x": 1}),
             metadata: %{"k" => "v"},
             binary_args: %{
               "arr" => %Blob{data: "\x93NUMPY", content_type: "application/x-npy"},
               "b" => %Blob{}
             }
           }

    assert ExecuteToolResponse.decode(bytes.("response")) ==
             %ExecuteToolResponse{
               data: "42",
               content_type: "application/json",
               metadata: %{"execution_time_ms" => "3"}
             }

    assert %ListToolsResponse{
             tools: [%ToolInfo{name: "echo"}, %ToolInfo{name: "s", supports_streaming: true}]
           } = ListToolsResponse.decode(bytes.("tools"))

    assert InitializeSessionRequest.decode(bytes.("init")) ==
             %InitializeSessionRequest{session_id: "s1", metadata: %{"user" => "ann"}}

    assert %ToolError{type: "ValueError", message: "bad", traceback: "tb", tool_name: "fail"} =
             Proto.tool_error_from_status_details(bytes.("status"))
  end

  test "Python parses what Elixir encodes", %{py: py} do
    parsed = py["parsed"]

    assert parsed["request"] == [
             "tool",
             "sess",
             ~s({"n": 5}),
             %{"trace" => "abc"},
             %{"blob" => [Base.encode64(<<0, 255, 1>>), "application/octet-stream"]}
           ]

    assert parsed["chunk"] == [
             1 <<< 33,
             Base.encode64(<<1, 2, 3>>),
             "application/x-npy",
             true,
             %{"synthetic_final" => "true"}
           ]

    assert parsed["batch"] == for(i <- 0..199, do: [i, "#{i}"])
    assert parsed["ping"] == ["ünï", -7, 1 <<< 50]
    assert parsed["status"] == [9, "no", Proto.tool_error_type_url(), "KeyError", "k"]
  end
end
