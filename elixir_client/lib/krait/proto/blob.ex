defmodule Krait.Proto.Blob do
  @moduledoc """
  `krait.v1.Blob`: a binary tool argument with its content type
  (`application/x-npy` or `application/octet-stream`).
  """
  use Krait.Proto.Message, fields: [data: {1, :bytes}, content_type: {2, :string}]
end
