defmodule Krait.Proto.InputEnd do
  @moduledoc """
  `krait.v1.InputEnd`: the caller's input has ended; code 0 when it simply ended, otherwise the
  caller's input failed and the tool's iterator raises `InputError(message)`.
  """
  use Krait.Proto.Message, fields: [code: {1, :int32}, message: {2, :string}]
end
