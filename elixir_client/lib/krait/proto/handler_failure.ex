defmodule Krait.Proto.HandlerFailure do
  @moduledoc """
  `krait.v1.HandlerFailure`: why a handler gave no value: `type` is one of `HandlerNotFound`,
  `HandlerFailed`, `HandlerRaised`, `HandlerThrew`, `HandlerExited`, `HandlerTimeout`; the tool's
  `ctx.call` raises `HandlerError` carrying it and `message`.
  """
  use Krait.Proto.Message, fields: [type: {1, :string}, message: {2, :string}]
end
