defmodule Krait.Proto.MetricsResponse do
  @moduledoc "`krait.v1.MetricsResponse`: a worker's Prometheus metrics in the text format."
  use Krait.Proto.Message, fields: [text: {1, :string}]
end
