defmodule Krait.Proto.LogRecord do
  @moduledoc "`krait.v1.LogRecord`: one Python log record, as a worker sends it over the local link."
  use Krait.Proto.Message,
    fields: [
      level: {1, :string},
      logger: {2, :string},
      message: {3, :string},
      exception: {4, :string},
      tool: {5, :string},
      session_id: {6, :string},
      call_id: {7, :string},
      trace_id: {8, :string}
    ]
end
