defmodule Krait.Proto.PingResponse do
  @moduledoc "`krait.v1.PingResponse`: the worker's identity and uptime."
  use Krait.Proto.Message,
    fields: [
      message: {1, :string},
      worker_id: {2, :string},
      adapter: {3, :string},
      pid: {4, :int64},
      uptime_ms: {5, :int64}
    ]
end
