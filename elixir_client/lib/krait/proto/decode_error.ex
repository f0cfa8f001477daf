defmodule Krait.Proto.DecodeError do
  @moduledoc "Raised when bytes are not a valid encoding of the expected protobuf message."
  defexception message: "invalid protobuf message"
end
