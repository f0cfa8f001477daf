defmodule Krait.Proto do
  @moduledoc """
  Protobuf (proto3) messages of Krait's wire contract, `proto/krait/v1/worker.proto`,
  plus `google.rpc.Status` (`Krait.Proto.RpcStatus`) and `google.protobuf.Any`
  (`Krait.Proto.Any`).

  Hand-written: no protobuf library for Elixir is available here (hex.pm is unreachable)
  and the contract is small. Each message is a struct module with `encode/1` (iodata)
  and `decode/1`; map fields are Elixir maps, unknown fields are skipped, and bytes
  fields are sub-binaries of the input (decoding a 4 MiB chunk copies nothing).
  Most modules are declared with `Krait.Proto.Message`; the hot ones
  (`Krait.Proto.ToolChunk`, `Krait.Proto.ToolChunkBatch`) are written out for speed.
  The service's method paths are listed by `path/1`.
  """

  alias Krait.Proto.{DecodeError, RpcStatus, ToolError}

  @tool_error_type "type.googleapis.com/krait.v1.ToolError"

  @paths %{
    ping: "/krait.v1.ToolWorker/Ping",
    list_tools: "/krait.v1.ToolWorker/ListTools",
    initialize_session: "/krait.v1.ToolWorker/InitializeSession",
    cleanup_session: "/krait.v1.ToolWorker/CleanupSession",
    execute_tool: "/krait.v1.ToolWorker/ExecuteTool",
    execute_streaming_tool: "/krait.v1.ToolWorker/ExecuteStreamingTool",
    execute_streaming_tool_batched: "/krait.v1.ToolWorker/ExecuteStreamingToolBatched",
    execute_tool_duplex: "/krait.v1.ToolWorker/ExecuteToolDuplex",
    metrics: "/krait.v1.ToolWorker/Metrics"
  }

  @typedoc "An RPC of the `krait.v1.ToolWorker` service."
  @type rpc ::
          :ping
          | :list_tools
          | :initialize_session
          | :cleanup_session
          | :execute_tool
          | :execute_streaming_tool
          | :execute_streaming_tool_batched
          | :execute_tool_duplex
          | :metrics

  @doc "The gRPC path of a `krait.v1.ToolWorker` RPC, e.g. `\"/krait.v1.ToolWorker/Ping\"`."
  @spec path(rpc) :: String.t()
  def path(rpc), do: Map.fetch!(@paths, rpc)

  @doc "The `type_url` a `krait.v1.ToolError` has inside a `google.protobuf.Any`."
  @spec tool_error_type_url() :: String.t()
  def tool_error_type_url, do: @tool_error_type

  @doc """
  Finds the `krait.v1.ToolError` in the raw bytes of a `grpc-status-details-bin` trailer
  (a serialized `google.rpc.Status`). Returns `nil` when there is none or the bytes do
  not decode.
  """
  @spec tool_error_from_status_details(binary | nil) :: ToolError.t() | nil
  def tool_error_from_status_details(nil), do: nil

  def tool_error_from_status_details(details) when is_binary(details) do
    %RpcStatus{details: anys} = RpcStatus.decode(details)

    Enum.find_value(anys, fn
      %{type_url: @tool_error_type, value: value} -> ToolError.decode(value)
      _ -> nil
    end)
  rescue
    DecodeError -> nil
  end
end
