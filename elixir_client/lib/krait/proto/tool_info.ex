defmodule Krait.Proto.ToolInfo do
  @moduledoc """
  `krait.v1.ToolInfo`: one tool of the adapter, with the JSON Schemas of its parameters and
  of its result (each chunk's data for a streaming tool; empty when the tool does not say) as text,
  and of each item of its input stream (`input_param` names that parameter; empty when it reads none).
  """
  use Krait.Proto.Message,
    fields: [
      name: {1, :string},
      description: {2, :string},
      supports_streaming: {3, :bool},
      parameters_schema_json: {4, :string},
      result_schema_json: {5, :string},
      input_schema_json: {6, :string},
      input_param: {7, :string}
    ]
end
