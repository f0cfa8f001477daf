defmodule Krait.ChunkJSON do
  @moduledoc """
  Krait chunks as the JSON the worker's HTTP front sends (`docs/http.md`), so that a Phoenix app can
  forward `Krait.stream/3` to a browser in the very shape the live page and any other client of the
  front read:

      %{"seq" => 3, "content_type" => "application/json", "data" => %{"loss" => 0.12}, "metadata" => %{}}

  `data` is the decoded JSON term for `application/json`; for a `%Krait.Tensor{}` (`application/x-npy`)
  `%{"dtype" => "<f4", "shape" => [2, 3], "base64" => ...}` with the raw C-order bytes; a string for
  `text/*`; `%{"base64" => ...}` for any other binary (bytes, Arrow); `nil` for a payload-less final
  chunk.

    * `to_map/2` - the chunk as a map (to broadcast with `Phoenix.PubSub`, push to a LiveView or
      encode with Phoenix's JSON library);
    * `encode/2` - the chunk's JSON text;
    * `sse_event/2` - one Server-Sent Event, `event: chunk` (or `final` for the last chunk),
      `id: <seq>`, `data: <chunk JSON>`, as the front's `/v1/tools/{name}/stream` writes them;
    * `error_map/1`, `sse_error/1` - a `%Krait.Error{}` as the front's `{"error": {"type", "message",
      "code", ...}}` (`code` the gRPC status name) and its `event: error`; `http_status/1` the HTTP
      status the front would answer.

  `extra_metadata` (`to_map/2`...) is merged into the chunk's metadata: the front adds
  `"dropped_chunks"` to a final chunk when it dropped chunks for a slow client.
  """

  alias Krait.{Chunk, Error, Tensor}

  # the code of an error that did not come from a worker's status
  @category_codes %{
    python: "UNKNOWN",
    timeout: "DEADLINE_EXCEEDED",
    invalid_argument: "INVALID_ARGUMENT",
    not_found: "NOT_FOUND",
    failed_precondition: "FAILED_PRECONDITION",
    cancelled: "CANCELLED",
    resource_exhausted: "RESOURCE_EXHAUSTED",
    unauthenticated: "UNAUTHENTICATED",
    worker: "UNAVAILABLE",
    pool: "UNAVAILABLE",
    callback: "INTERNAL",
    protocol: "INTERNAL",
    grpc: "UNKNOWN"
  }

  @http_statuses %{
    "INVALID_ARGUMENT" => 400,
    "FAILED_PRECONDITION" => 400,
    "OUT_OF_RANGE" => 400,
    "UNAUTHENTICATED" => 401,
    "PERMISSION_DENIED" => 403,
    "NOT_FOUND" => 404,
    "ALREADY_EXISTS" => 409,
    "ABORTED" => 409,
    "RESOURCE_EXHAUSTED" => 429,
    "CANCELLED" => 499,
    "UNIMPLEMENTED" => 501,
    "UNAVAILABLE" => 503,
    "DEADLINE_EXCEEDED" => 504
  }

  @typedoc "A chunk as the front's JSON (string keys)."
  @type chunk_map :: %{String.t() => term()}

  @doc """
  The chunk as the front's chunk JSON, a map with string keys.

  Raises `ArgumentError` for a tensor in Fortran order (a worker always sends C order).
  """
  @spec to_map(Chunk.t(), %{String.t() => String.t()}) :: chunk_map()
  def to_map(%Chunk{} = chunk, extra_metadata \\ %{}) do
    %{
      "seq" => chunk.seq,
      "content_type" => chunk.content_type,
      "data" => data(chunk.data, chunk.content_type),
      "metadata" => Map.merge(chunk.metadata, extra_metadata)
    }
  end

  @doc "The chunk's JSON text (see `to_map/2`)."
  @spec encode(Chunk.t(), %{String.t() => String.t()}) :: iodata()
  def encode(%Chunk{} = chunk, extra_metadata \\ %{}),
    do: Krait.JSON.encode!(to_map(chunk, extra_metadata))

  @doc """
  The chunk as one Server-Sent Event: `event: chunk` (`final` for the stream's last chunk), `id:` its
  seq and `data:` its JSON, then the blank line that ends the event.
  """
  @spec sse_event(Chunk.t(), %{String.t() => String.t()}) :: iodata()
  def sse_event(%Chunk{} = chunk, extra_metadata \\ %{}) do
    name = if chunk.is_final, do: "final", else: "chunk"

    [
      "event: ",
      name,
      "\nid: ",
      Integer.to_string(chunk.seq),
      "\ndata: ",
      encode(chunk, extra_metadata),
      "\n\n"
    ]
  end

  @doc """
  A `%Krait.Error{}` as the front's error JSON: `%{"error" => %{"type", "message", "code"}}`, with
  `"traceback"` and `"details"` (the exception's public fields) when the tool raised.
  """
  @spec error_map(Error.t()) :: %{String.t() => map()}
  def error_map(%Error{details: details} = error) do
    fields = Map.get(details, :fields, %{})

    body =
      %{"type" => error_type(error), "message" => error.message, "code" => code(error)}
      |> put_present("traceback", Map.get(details, :traceback))
      |> put_present("details", if(fields == %{}, do: nil, else: fields))

    %{"error" => body}
  end

  @doc "A `%Krait.Error{}` as the front's `event: error` Server-Sent Event."
  @spec sse_error(Error.t()) :: iodata()
  def sse_error(%Error{} = error),
    do: ["event: error\ndata: ", Krait.JSON.encode!(error_map(error)), "\n\n"]

  @doc "The gRPC status name of an error (`\"DEADLINE_EXCEEDED\"`...)."
  @spec code(Error.t()) :: String.t()
  def code(%Error{details: %{status: status}}) when is_integer(status) and status in 1..16,
    do: Krait.GRPC.Error.status_name(status)

  def code(%Error{category: category}), do: Map.get(@category_codes, category, "UNKNOWN")

  @doc "The HTTP status the front answers an error with (500 for codes it does not map)."
  @spec http_status(Error.t()) :: pos_integer()
  def http_status(%Error{} = error), do: Map.get(@http_statuses, code(error), 500)

  defp data(nil, _content_type), do: nil

  defp data(%Tensor{fortran_order: true}, _content_type),
    do: raise(ArgumentError, "Krait.ChunkJSON: a tensor in Fortran order has no C-order bytes")

  defp data(%Tensor{} = tensor, _content_type) do
    %{
      "dtype" => Tensor.dtype_str(tensor),
      "shape" => Tuple.to_list(tensor.shape),
      "base64" => Base.encode64(tensor.data)
    }
  end

  defp data(value, "application/json"), do: value
  defp data(value, "text/" <> _) when is_binary(value), do: value
  defp data(value, _content_type) when is_binary(value), do: %{"base64" => Base.encode64(value)}
  defp data(value, _content_type), do: value

  defp error_type(%Error{details: %{type: type}}) when is_binary(type) and type != "", do: type

  defp error_type(%Error{category: category}),
    do: category |> Atom.to_string() |> Macro.camelize() |> Kernel.<>("Error")

  defp put_present(map, _key, value) when value in [nil, ""], do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)
end
