defmodule Krait.Proto.ToolChunk do
  @moduledoc """
  `krait.v1.ToolChunk`: one value a streaming tool yielded (`data` with its
  `content_type`), its position `seq`, `is_final` on the last one, and metadata.

  Written out by hand rather than with `Krait.Proto.Message`: a `ToolChunkBatch` carries
  up to thousands of chunks, so decoding matches each field in the clause head (one-octet
  keys and one- or two-octet lengths, the shapes small chunks have) and builds the struct
  once at the end. `data` stays a sub-binary of the input.
  """

  import Bitwise

  alias Krait.Proto.Wire

  defstruct seq: 0, data: "", content_type: "", is_final: false, metadata: %{}

  @type t :: %__MODULE__{
          seq: non_neg_integer,
          data: binary,
          content_type: String.t(),
          is_final: boolean,
          metadata: %{optional(String.t()) => String.t()}
        }

  @doc "Encodes the chunk to iodata (proto3 wire format)."
  @spec encode(t) :: iodata
  def encode(%__MODULE__{} = chunk) do
    [
      Wire.field(1, :uint64, chunk.seq),
      Wire.field(2, :bytes, chunk.data),
      Wire.field(3, :string, chunk.content_type),
      Wire.field(4, :bool, chunk.is_final),
      Wire.map_field(5, chunk.metadata, &Wire.field(2, :string, &1))
    ]
  end

  @doc """
  Decodes a chunk. Raises `Krait.Proto.DecodeError` on malformed input; unknown fields
  are skipped.
  """
  @spec decode(binary) :: t
  def decode(binary) when is_binary(binary), do: fields(binary, 0, "", "", false, %{})

  defp fields(<<>>, seq, data, type, final, meta),
    do: %__MODULE__{seq: seq, data: data, content_type: type, is_final: final, metadata: meta}

  # seq = 1, varint
  defp fields(<<0x08, 0::1, v::7, rest::binary>>, _seq, data, type, final, meta),
    do: fields(rest, v, data, type, final, meta)

  defp fields(<<0x08, 1::1, lo::7, 0::1, hi::7, rest::binary>>, _seq, data, type, final, meta),
    do: fields(rest, hi <<< 7 ||| lo, data, type, final, meta)

  defp fields(<<0x08, 1::1, lo::7, 1::1, mid::7, 0::1, hi::7, rest::binary>>, _, d, t, f, m),
    do: fields(rest, hi <<< 14 ||| mid <<< 7 ||| lo, d, t, f, m)

  # data = 2, bytes
  defp fields(<<0x12, 0::1, n::7, v::binary-size(n), rest::binary>>, seq, _, type, final, meta),
    do: fields(rest, seq, v, type, final, meta)

  defp fields(<<0x12, 1::1, lo::7, 0::1, hi::7, rest::binary>>, seq, _, type, final, meta)
       when byte_size(rest) >= (hi <<< 7 ||| lo) do
    <<v::binary-size(hi <<< 7 ||| lo), rest::binary>> = rest
    fields(rest, seq, v, type, final, meta)
  end

  # content_type = 3, string
  defp fields(<<0x1A, 0::1, n::7, v::binary-size(n), rest::binary>>, seq, data, _, final, meta),
    do: fields(rest, seq, data, v, final, meta)

  # is_final = 4, bool
  defp fields(<<0x20, 0::1, v::7, rest::binary>>, seq, data, type, _, meta),
    do: fields(rest, seq, data, type, v != 0, meta)

  # metadata = 5, map<string, string> entries
  defp fields(<<0x2A, rest::binary>>, seq, data, type, final, meta) do
    {entry, rest} = Wire.decode_delimited(rest)
    {key, value} = Wire.map_entry(entry, &string_value/1, "")
    fields(rest, seq, data, type, final, Map.put(meta, key, value))
  end

  # Anything else: long varints and lengths, packed or unknown fields.
  defp fields(binary, seq, data, type, final, meta) do
    case Wire.decode_field(binary) do
      {1, raw, rest} -> fields(rest, scalar(raw, :uint64, seq), data, type, final, meta)
      {2, {:bytes, v}, rest} -> fields(rest, seq, v, type, final, meta)
      {3, {:bytes, v}, rest} -> fields(rest, seq, data, v, final, meta)
      {4, raw, rest} -> fields(rest, seq, data, type, scalar(raw, :bool, final), meta)
      {_, _, rest} -> fields(rest, seq, data, type, final, meta)
    end
  end

  defp scalar(raw, type, default) do
    case Wire.scalar(raw, type) do
      :skip -> default
      value -> value
    end
  end

  defp string_value({:bytes, value}), do: value
  defp string_value(_), do: ""
end
