defmodule Krait.GRPC.Error do
  @moduledoc """
  A failed gRPC call: the gRPC status code, its message and the raw
  `grpc-status-details-bin` bytes (a serialized `google.rpc.Status`, see
  `Krait.Proto.RpcStatus` and `Krait.Proto.tool_error_from_status_details/1`).

  Transport failures (connection lost, stream refused, connection going away) are reported
  as `UNAVAILABLE` (14); a deadline reached locally as `DEADLINE_EXCEEDED` (4).
  `trailers` holds every trailer the server sent, `-bin` values base64-decoded.

  `unprocessed` is true when the call certainly never started on the server: it was refused before
  being sent, refused by the server's GOAWAY, or its connection was lost before any response
  headers arrived (Krait workers send theirs before a tool runs). Such a call is safe to retry.
  """

  @codes %{
    0 => "OK",
    1 => "CANCELLED",
    2 => "UNKNOWN",
    3 => "INVALID_ARGUMENT",
    4 => "DEADLINE_EXCEEDED",
    5 => "NOT_FOUND",
    6 => "ALREADY_EXISTS",
    7 => "PERMISSION_DENIED",
    8 => "RESOURCE_EXHAUSTED",
    9 => "FAILED_PRECONDITION",
    10 => "ABORTED",
    11 => "OUT_OF_RANGE",
    12 => "UNIMPLEMENTED",
    13 => "INTERNAL",
    14 => "UNAVAILABLE",
    15 => "DATA_LOSS",
    16 => "UNAUTHENTICATED"
  }

  defexception status: 2, message: "", details: nil, trailers: %{}, unprocessed: false

  @type t :: %__MODULE__{
          status: non_neg_integer,
          message: String.t(),
          details: binary | nil,
          trailers: %{optional(String.t()) => binary},
          unprocessed: boolean()
        }

  @impl true
  def message(%__MODULE__{status: status, message: message}) do
    "gRPC #{status_name(status)} (#{status}): #{message}"
  end

  @doc "The canonical name of a gRPC status code, such as `\"UNAVAILABLE\"`."
  @spec status_name(non_neg_integer) :: String.t()
  def status_name(code), do: Map.get(@codes, code, "CODE_#{code}")

  @doc "An `UNAVAILABLE` error for a transport failure."
  @spec unavailable(String.t()) :: t
  def unavailable(message), do: %__MODULE__{status: 14, message: message}

  @doc "An `UNAVAILABLE` error for a call that never started on the server (see `unprocessed`)."
  @spec unprocessed(String.t()) :: t
  def unprocessed(message), do: %__MODULE__{status: 14, message: message, unprocessed: true}

  @doc "A `DEADLINE_EXCEEDED` error raised locally."
  @spec deadline_exceeded() :: t
  def deadline_exceeded, do: %__MODULE__{status: 4, message: "deadline exceeded (local timer)"}

  @doc "An `INTERNAL` error, for responses that break the gRPC protocol."
  @spec internal(String.t()) :: t
  def internal(message), do: %__MODULE__{status: 13, message: message}
end
