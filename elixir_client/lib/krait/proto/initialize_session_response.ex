defmodule Krait.Proto.InitializeSessionResponse do
  @moduledoc "`krait.v1.InitializeSessionResponse`: `created` is false if it existed."
  use Krait.Proto.Message, fields: [created: {1, :bool}]
end
