defmodule Krait.Proto.PingRequest do
  @moduledoc "`krait.v1.PingRequest`: a liveness probe whose message the worker echoes."
  use Krait.Proto.Message, fields: [message: {1, :string}]
end
