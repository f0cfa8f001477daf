defmodule Krait.Proto.ToolInfo do
  @moduledoc """
  `krait.v1.ToolInfo`: one tool of the adapter, with the JSON Schema of its parameters
  as text.
  """
  use Krait.Proto.Message,
    fields: [
      name: {1, :string},
      description: {2, :string},
      supports_streaming: {3, :bool},
      parameters_schema_json: {4, :string}
    ]
end
