defmodule Krait.Proto.InputItem do
  @moduledoc """
  `krait.v1.InputItem`: one item of a tool's input stream, `data` with its `content_type`
  (`application/json` when empty, `application/x-npy`, `application/octet-stream`).
  """
  use Krait.Proto.Message, fields: [data: {1, :bytes}, content_type: {2, :string}]
end
