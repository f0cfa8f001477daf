defmodule Krait.Proto.ListToolsRequest do
  @moduledoc "`krait.v1.ListToolsRequest`: no fields."
  use Krait.Proto.Message, fields: []
end
