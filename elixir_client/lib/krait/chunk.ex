defmodule Krait.Chunk do
  @moduledoc """
  One value a streaming tool yielded, as handed to an `execute_stream/4` callback or emitted by
  `Krait.stream/3`.

    * `data` - the decoded payload (see `Krait.Payload`): a map or other JSON term, a `%Krait.Tensor{}`,
      a binary or a string; `nil` for a payload-less final chunk.
    * `content_type` - the payload's content type as sent (`"application/json"`...); `""` when none.
    * `is_final` - true on the stream's last chunk.
    * `metadata` - string map from the tool; the final chunk also has `"execution_time_ms"`,
      `"tool_type"`, `"worker_id"`, and `"synthetic_final" => "true"` when the tool itself did not
      mark a final chunk (the worker then adds an empty one).
    * `seq` - 0, 1, 2... in the order the tool yielded.

  A chunk implements `Access` on its JSON data, so `chunk["epoch"]` reads the `"epoch"` key of a JSON
  object (atom keys are looked up as strings: `chunk[:epoch]`); on any other payload it returns `nil`.
  """

  @behaviour Access

  @json "application/json"

  defstruct seq: 0, data: nil, content_type: "", is_final: false, metadata: %{}

  @type t :: %__MODULE__{
          seq: non_neg_integer(),
          data: term(),
          content_type: String.t(),
          is_final: boolean(),
          metadata: %{optional(String.t()) => String.t()}
        }

  @doc "Builds a chunk from a decoded `Krait.Proto.ToolChunk`, decoding its payload."
  @spec from_proto(struct()) :: {:ok, t()} | {:error, String.t()}
  def from_proto(%{seq: seq, data: data, content_type: ct, is_final: final, metadata: meta}) do
    case Krait.Payload.decode(data, ct) do
      {:ok, value} ->
        {:ok,
         %__MODULE__{seq: seq, data: value, content_type: ct, is_final: final, metadata: meta}}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Builds the chunks of a batch of decoded `Krait.Proto.ToolChunk`s, in order. The JSON payloads
  (`application/json`, what small chunks carry) are decoded together, with one call of the JSON
  library; when that fails, each is decoded alone, so the error is the one chunk's.
  """
  @spec from_protos([struct()]) :: {:ok, [t()]} | {:error, String.t()}
  def from_protos(protos) do
    case for(%{content_type: @json, data: data} <- protos, do: data) do
      [] ->
        one_by_one(protos, [])

      [_] ->
        one_by_one(protos, [])

      documents ->
        case Krait.JSON.decode_many(documents) do
          {:ok, values} -> with_values(protos, values, [])
          :error -> one_by_one(protos, [])
        end
    end
  end

  @doc """
  Builds the chunks of a link `JSON_CHUNKS` frame: `array` is the JSON array text of consecutive plain
  JSON chunks (not final, no metadata), decoded with one call of the JSON library; its elements are the
  chunks `first_seq`, `first_seq + 1`... in order.
  """
  @spec from_json_array(non_neg_integer(), binary()) :: {:ok, [t()]} | {:error, String.t()}
  def from_json_array(first_seq, array) do
    case Krait.JSON.decode(array) do
      {:ok, [_ | _] = values} -> {:ok, numbered(values, first_seq, [])}
      _ -> {:error, "invalid JSON payload"}
    end
  end

  defp numbered([], _seq, acc), do: :lists.reverse(acc)

  defp numbered([value | values], seq, acc),
    do: numbered(values, seq + 1, [%__MODULE__{seq: seq, data: value, content_type: @json} | acc])

  defp with_values([], [], acc), do: {:ok, :lists.reverse(acc)}

  defp with_values([%{content_type: @json} = proto | protos], [value | values], acc),
    do: with_values(protos, values, [chunk(proto, value) | acc])

  defp with_values([proto | protos], values, acc) do
    case from_proto(proto) do
      {:ok, chunk} -> with_values(protos, values, [chunk | acc])
      {:error, _} = error -> error
    end
  end

  defp one_by_one([], acc), do: {:ok, :lists.reverse(acc)}

  defp one_by_one([proto | protos], acc) do
    case from_proto(proto) do
      {:ok, chunk} -> one_by_one(protos, [chunk | acc])
      {:error, _} = error -> error
    end
  end

  defp chunk(%{seq: seq, content_type: ct, is_final: final, metadata: meta}, value),
    do: %__MODULE__{seq: seq, data: value, content_type: ct, is_final: final, metadata: meta}

  @doc "True when the worker added this final chunk because the tool ended without one."
  @spec synthetic_final?(t()) :: boolean()
  def synthetic_final?(%__MODULE__{metadata: meta}),
    do: Map.get(meta, "synthetic_final") == "true"

  @impl Access
  def fetch(%__MODULE__{data: data}, key) when is_map(data) and not is_struct(data) do
    case Map.fetch(data, key) do
      :error when is_atom(key) -> Map.fetch(data, Atom.to_string(key))
      result -> result
    end
  end

  def fetch(%__MODULE__{}, _key), do: :error

  @impl Access
  def get_and_update(%__MODULE__{data: data} = chunk, key, fun) when is_map(data) do
    {value, data} = Map.get_and_update(data, data_key(data, key), fun)
    {value, %{chunk | data: data}}
  end

  def get_and_update(%__MODULE__{data: nil} = chunk, key, fun) do
    {value, data} = Map.get_and_update(%{}, key, fun)
    {value, %{chunk | data: data}}
  end

  def get_and_update(%__MODULE__{data: data}, key, _fun) do
    raise ArgumentError,
          "cannot update key #{inspect(key)} of a chunk whose data is #{inspect(data)}"
  end

  @impl Access
  def pop(%__MODULE__{data: data} = chunk, key) when is_map(data) do
    {value, data} = Map.pop(data, data_key(data, key))
    {value, %{chunk | data: data}}
  end

  def pop(%__MODULE__{} = chunk, _key), do: {nil, chunk}

  defp data_key(data, key) when is_atom(key) do
    if Map.has_key?(data, key), do: key, else: Atom.to_string(key)
  end

  defp data_key(_data, key), do: key
end
