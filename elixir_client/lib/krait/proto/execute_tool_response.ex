defmodule Krait.Proto.ExecuteToolResponse do
  @moduledoc """
  `krait.v1.ExecuteToolResponse`: a non-streaming tool's value (`data` with its
  `content_type`) and metadata such as `execution_time_ms`.
  """
  use Krait.Proto.Message,
    fields: [data: {1, :bytes}, content_type: {2, :string}, metadata: {3, {:map, :string}}]
end
