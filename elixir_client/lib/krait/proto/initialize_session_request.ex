defmodule Krait.Proto.InitializeSessionRequest do
  @moduledoc "`krait.v1.InitializeSessionRequest`: creates or refreshes a session."
  use Krait.Proto.Message,
    fields: [session_id: {1, :string}, metadata: {2, {:map, :string}}]
end
