defmodule Krait.Proto.RpcStatus do
  @moduledoc """
  `google.rpc.Status`: what `grpc-status-details-bin` carries; Krait puts a
  `krait.v1.ToolError` in `details`.
  """
  use Krait.Proto.Message,
    fields: [code: {1, :int32}, message: {2, :string}, details: {3, {:repeated, Krait.Proto.Any}}]
end
