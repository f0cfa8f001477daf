defmodule Krait.Proto.ListToolsResponse do
  @moduledoc "`krait.v1.ListToolsResponse`: every tool of the worker's adapter."
  use Krait.Proto.Message,
    fields: [
      tools: {1, {:repeated, Krait.Proto.ToolInfo}},
      worker_id: {2, :string},
      adapter: {3, :string}
    ]
end
