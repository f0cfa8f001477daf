defmodule Krait.Proto.Any do
  @moduledoc "`google.protobuf.Any`: a message serialized in `value`, named by `type_url`."
  use Krait.Proto.Message, fields: [type_url: {1, :string}, value: {2, :bytes}]
end
