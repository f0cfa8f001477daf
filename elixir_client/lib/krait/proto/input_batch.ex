defmodule Krait.Proto.InputBatch do
  @moduledoc """
  `krait.v1.InputBatch`: input items in order, as the caller sends them within its credit. The
  caller builds batches from pre-encoded items (`Krait.Call.Feeder`); this module is for tests and
  tools that want the struct.
  """
  use Krait.Proto.Message, fields: [items: {1, {:repeated, Krait.Proto.InputItem}}]
end
