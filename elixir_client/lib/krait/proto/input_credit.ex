defmodule Krait.Proto.InputCredit do
  @moduledoc """
  `krait.v1.InputCredit`: the worker lets the caller send `items` more input items and `bytes` more
  bytes of item data (the last item may overshoot the bytes).
  """
  use Krait.Proto.Message, fields: [items: {1, :uint64}, bytes: {2, :uint64}]
end
