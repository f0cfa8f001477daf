defmodule Krait.Payload do
  @moduledoc """
  Payloads on the wire always travel with their content type (see `proto/krait/v1/worker.proto`).
  This module turns them into Elixir terms and tool arguments into a request's `args_json` and
  `binary_args`.

  | content type                | Elixir value                  |
  | --------------------------- | ----------------------------- |
  | `application/json`          | the decoded term              |
  | `application/x-npy`         | `%Krait.Tensor{}`             |
  | `application/octet-stream`  | a binary                      |
  | `text/plain; charset=utf-8` | a string                      |
  | `application/vnd.apache.arrow.stream` | the binary: a table (a pandas DataFrame) as an Arrow IPC stream, which `Explorer.DataFrame.load_ipc_stream/1` reads |
  | empty (with empty data)     | `nil` (no payload)            |
  """

  @json "application/json"
  @npy "application/x-npy"
  @octet "application/octet-stream"
  @text "text/plain; charset=utf-8"

  @doc "Decodes `data` according to `content_type`."
  @spec decode(binary(), String.t()) :: {:ok, term()} | {:error, String.t()}
  def decode(data, @json) do
    {:ok, Krait.JSON.decode!(data)}
  rescue
    _ -> {:error, "invalid JSON payload"}
  catch
    _, _ -> {:error, "invalid JSON payload"}
  end

  def decode(data, @npy), do: Krait.Tensor.from_npy(data)
  def decode(data, @octet), do: {:ok, data}
  def decode(data, @text), do: {:ok, data}
  def decode(<<>>, ""), do: {:ok, nil}

  def decode(data, content_type) do
    # Tolerate parameters and case differences ("Application/JSON; charset=utf-8").
    case content_type |> String.split(";") |> hd() |> String.trim() |> String.downcase() do
      "application/json" -> decode(data, @json)
      "application/x-npy" -> decode(data, @npy)
      "text/plain" -> {:ok, data}
      _ -> {:ok, data}
    end
  end

  @doc """
  Splits tool arguments into the JSON object text and the binary arguments.

  Top-level values that are `%Krait.Tensor{}` travel as `.npy`, `{:binary, bin}` as octet-stream; all
  other values are encoded as JSON (atom keys become strings). `args` is a map or a keyword list.
  """
  @spec encode_args(map() | keyword()) ::
          {:ok, iodata(), %{String.t() => {iodata(), String.t()}}} | {:error, String.t()}
  def encode_args(args) when is_list(args) do
    if Keyword.keyword?(args),
      do: encode_args(Map.new(args)),
      else: {:error, "tool arguments must be a map or a keyword list"}
  end

  def encode_args(args) when is_map(args) and not is_struct(args) do
    {binaries, plain} =
      Enum.split_with(args, fn
        {_k, %Krait.Tensor{}} -> true
        {_k, {:binary, bin}} when is_binary(bin) -> true
        _ -> false
      end)

    with :ok <- check_tensors(binaries),
         {:ok, text} <- encode_json(plain) do
      binary_args =
        Map.new(binaries, fn
          {k, %Krait.Tensor{} = t} -> {to_string(k), {Krait.Tensor.to_npy(t), @npy}}
          {k, {:binary, bin}} -> {to_string(k), {bin, @octet}}
        end)

      {:ok, text, binary_args}
    end
  end

  def encode_args(nil), do: {:ok, "", %{}}

  def encode_args(other),
    do:
      {:error,
       "tool arguments must be a map or a keyword list, got: #{inspect(other, limit: 10)}"}

  defp check_tensors(binaries) do
    Enum.find_value(binaries, :ok, fn
      {k, %Krait.Tensor{} = t} ->
        case Krait.Tensor.check(t) do
          :ok -> nil
          {:error, message} -> {:error, "argument #{inspect(to_string(k))}: #{message}"}
        end

      _ ->
        nil
    end)
  end

  defp encode_json([]), do: {:ok, ""}

  defp encode_json(plain) do
    case Krait.JSON.encode(Map.new(plain)) do
      {:ok, text} ->
        {:ok, text}

      {:error, _} ->
        {:error,
         "tool arguments cannot be encoded as JSON: #{inspect(Map.new(plain), limit: 10)}"}
    end
  end
end
