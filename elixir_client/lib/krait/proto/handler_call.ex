defmodule Krait.Proto.HandlerCall do
  @moduledoc """
  `krait.v1.HandlerCall`: a tool asks its caller to run the handler `name` with `args_json` and
  answer within `timeout_ms` (0: only the call's deadline); `id` is unique within the call.
  """
  use Krait.Proto.Message,
    fields: [
      id: {1, :uint64},
      name: {2, :string},
      args_json: {3, :string},
      timeout_ms: {4, :uint64}
    ]
end
