defmodule Krait.Proto.ToolError do
  @moduledoc """
  `krait.v1.ToolError`: the structured error of a failed tool, carried in the
  `google.rpc.Status` details of the call's `grpc-status-details-bin` trailer.
  `details_json` is a JSON object of the exception's public fields (empty when it has none).
  """
  use Krait.Proto.Message,
    fields: [
      type: {1, :string},
      message: {2, :string},
      traceback: {3, :string},
      tool_name: {4, :string},
      worker_id: {5, :string},
      details_json: {6, :string}
    ]
end
