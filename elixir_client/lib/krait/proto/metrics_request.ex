defmodule Krait.Proto.MetricsRequest do
  @moduledoc "`krait.v1.MetricsRequest`: no fields."
  use Krait.Proto.Message, fields: []
end
