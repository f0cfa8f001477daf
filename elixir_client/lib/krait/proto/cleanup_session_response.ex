defmodule Krait.Proto.CleanupSessionResponse do
  @moduledoc "`krait.v1.CleanupSessionResponse`: `existed` tells whether there was one."
  use Krait.Proto.Message, fields: [existed: {1, :bool}]
end
