defmodule Krait.GRPC.Metadata do
  @moduledoc """
  gRPC's conventions on top of HTTP/2 headers (the "gRPC over HTTP2" spec): the
  `grpc-timeout` format, percent-encoded `grpc-message`, base64 `-bin` values, the final
  status read from trailers, and the HTTP status and RST_STREAM code mappings.
  """

  alias Krait.GRPC.Error

  @doc """
  Formats a timeout in milliseconds as a `grpc-timeout` value (at most 8 digits and a
  unit), rounding up to a coarser unit when needed.
  """
  @spec encode_timeout(non_neg_integer) :: String.t()
  def encode_timeout(ms) when is_integer(ms) and ms >= 0 do
    cond do
      ms < 100_000_000 -> "#{ms}m"
      ms < 100_000_000_000 -> "#{div(ms + 999, 1000)}S"
      true -> "#{min(div(ms + 59_999, 60_000), 99_999_999)}M"
    end
  end

  @doc """
  The request headers' metadata part: validates keys and base64-encodes `-bin` values
  (unpadded, as the gRPC spec recommends). Raises `ArgumentError` for keys gRPC reserves
  or that are not valid lower-case header names.
  """
  @spec encode_metadata(%{optional(String.t()) => binary}) :: [{binary, binary}]
  def encode_metadata(metadata) when is_map(metadata) do
    Enum.map(metadata, fn {key, value} ->
      key = to_string(key)
      validate_key!(key)

      if String.ends_with?(key, "-bin"),
        do: {key, Base.encode64(value, padding: false)},
        else: {key, validate_value!(key, to_string(value))}
    end)
  end

  @reserved ~w(content-type te user-agent grpc-timeout grpc-encoding grpc-accept-encoding)

  defp validate_key!(key) do
    cond do
      key == "" or not String.match?(key, ~r/\A[0-9a-z_.\-]+\z/) ->
        raise ArgumentError,
              "invalid gRPC metadata key #{inspect(key)} (lower-case a-z 0-9 - _ .)"

      key in @reserved or String.starts_with?(key, "grpc-") ->
        raise ArgumentError, "gRPC metadata key #{inspect(key)} is reserved"

      true ->
        :ok
    end
  end

  defp validate_value!(key, value) do
    if String.match?(value, ~r/\A[\x20-\x7e]*\z/),
      do: value,
      else: raise(ArgumentError, "metadata #{inspect(key)}: value must be printable ASCII")
  end

  @doc """
  Decodes a percent-encoded `grpc-message`; malformed escapes are kept as they are.
  """
  @spec decode_message(binary) :: binary
  def decode_message(message), do: decode_percent(message, [])

  defp decode_percent(<<?%, hi, lo, rest::binary>> = all, acc) do
    case Integer.parse(<<hi, lo>>, 16) do
      {byte, ""} -> decode_percent(rest, [acc, byte])
      _ -> decode_percent(binary_part(all, 1, byte_size(all) - 1), [acc, ?%])
    end
  end

  defp decode_percent(<<byte, rest::binary>>, acc), do: decode_percent(rest, [acc, byte])
  defp decode_percent(<<>>, acc), do: IO.iodata_to_binary(acc)

  @doc """
  Decodes a `-bin` header value: base64 with or without padding; several values joined
  with commas are decoded one by one and concatenated. Returns `nil` if it is not base64.
  """
  @spec decode_bin(binary) :: binary | nil
  def decode_bin(value) do
    value
    |> String.split(",")
    |> Enum.reduce_while([], fn part, acc ->
      part = part |> String.trim() |> String.trim_trailing("=")

      case Base.decode64(part, padding: false) do
        {:ok, bytes} -> {:cont, [acc, bytes]}
        :error -> {:halt, :error}
      end
    end)
    |> case do
      :error -> nil
      iodata -> IO.iodata_to_binary(iodata)
    end
  end

  @doc """
  Turns a header list into a map, later values joined to earlier ones with commas, `-bin`
  values decoded to raw bytes. Pseudo-headers (`:status`) are left out.
  """
  @spec to_map([{binary, binary}]) :: %{optional(binary) => binary}
  def to_map(headers) do
    headers
    |> Enum.reject(&match?({":" <> _, _}, &1))
    |> Enum.reduce(%{}, fn {name, value}, acc ->
      Map.update(acc, name, value, &(&1 <> "," <> value))
    end)
    |> Map.new(fn {name, value} ->
      if String.ends_with?(name, "-bin"),
        do: {name, decode_bin(value) || value},
        else: {name, value}
    end)
  end

  @doc """
  The outcome a call's trailers (or Trailers-Only headers) announce: `:ok` for
  `grpc-status: 0`, else the error with its message and raw status details.
  `http_status` is used only when `grpc-status` is missing.
  """
  @spec status_from_trailers([{binary, binary}], non_neg_integer | nil) ::
          :ok | {:error, Error.t()}
  def status_from_trailers(trailers, http_status) do
    map = to_map(trailers)

    case Map.fetch(map, "grpc-status") do
      {:ok, "0"} ->
        :ok

      {:ok, code} ->
        status =
          case Integer.parse(code) do
            {status, ""} when status >= 0 -> status
            _ -> 2
          end

        {:error,
         %Error{
           status: status,
           message: decode_message(Map.get(map, "grpc-message", "")),
           details: Map.get(map, "grpc-status-details-bin"),
           trailers: map
         }}

      :error when http_status not in [nil, 200] ->
        {:error, %{from_http_status(http_status) | trailers: map}}

      :error ->
        {:error, %{Error.internal("server sent no grpc-status") | trailers: map}}
    end
  end

  @doc "The gRPC status for a non-200 HTTP status without `grpc-status` (gRPC spec mapping)."
  @spec from_http_status(non_neg_integer) :: Error.t()
  def from_http_status(http_status) do
    status =
      case http_status do
        400 -> 13
        401 -> 16
        403 -> 7
        404 -> 12
        s when s in [429, 502, 503, 504] -> 14
        _ -> 2
      end

    %Error{status: status, message: "HTTP status #{http_status}"}
  end

  @doc "The gRPC error for a stream the server reset with HTTP/2 `error_code`."
  @spec from_rst_stream(non_neg_integer) :: Error.t()
  def from_rst_stream(error_code) do
    {status, name} =
      case error_code do
        0x0 -> {13, "NO_ERROR"}
        0x7 -> {14, "REFUSED_STREAM"}
        0x8 -> {1, "CANCEL"}
        0xB -> {8, "ENHANCE_YOUR_CALM"}
        0xC -> {7, "INADEQUATE_SECURITY"}
        code -> {13, "error code #{code}"}
      end

    %Error{status: status, message: "stream reset by the server (#{name})"}
  end
end
