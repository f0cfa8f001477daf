defmodule Krait.Proto.CleanupSessionRequest do
  @moduledoc "`krait.v1.CleanupSessionRequest`: drops a session's state."
  use Krait.Proto.Message, fields: [session_id: {1, :string}]
end
