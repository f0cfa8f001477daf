defmodule Krait.Proto.ToolError do
  @moduledoc """
  `krait.v1.ToolError`: the structured error of a failed tool, carried in the
  `google.rpc.Status` details of the call's `grpc-status-details-bin` trailer.
  """
  use Krait.Proto.Message,
    fields: [
      type: {1, :string},
      message: {2, :string},
      traceback: {3, :string},
      tool_name: {4, :string},
      worker_id: {5, :string}
    ]
end
