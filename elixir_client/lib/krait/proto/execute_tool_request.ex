defmodule Krait.Proto.ExecuteToolRequest do
  @moduledoc """
  `krait.v1.ExecuteToolRequest`: the tool to run, its JSON arguments as text, metadata for
  the tool's context, and binary arguments (arrays, bytes) by parameter name.
  """
  use Krait.Proto.Message,
    fields: [
      tool_name: {1, :string},
      session_id: {2, :string},
      args_json: {3, :string},
      metadata: {4, {:map, :string}},
      binary_args: {5, {:map, Krait.Proto.Blob}}
    ]
end
