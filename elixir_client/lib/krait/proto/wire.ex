defmodule Krait.Proto.Wire do
  @moduledoc """
  The protobuf wire format (varints, keys, length-delimited fields) and the field
  encoders/decoders shared by the `Krait.Proto` messages.

  Decoding keeps strings and bytes as sub-binaries of the input: nothing is copied, so a
  multi-megabyte `ToolChunk.data` costs nothing to decode (the sub-binary keeps the whole
  input alive for as long as it is referenced).
  """

  import Bitwise

  alias Krait.Proto.DecodeError

  @typedoc "A field value read off the wire, before it is interpreted."
  @type raw ::
          {:varint, non_neg_integer} | {:bytes, binary} | {:fixed64, binary} | {:fixed32, binary}

  ## Encoding

  @doc "Encodes a non-negative integer as a varint."
  @spec varint(non_neg_integer) :: binary
  def varint(n) when n < 0x80, do: <<n>>
  def varint(n) when n < 0x4000, do: <<1::1, n &&& 0x7F::7, n >>> 7>>

  def varint(n) when n < 0x10_0000_0000_0000_0000,
    do: <<1::1, n &&& 0x7F::7, varint(n >>> 7)::binary>>

  @doc """
  Encodes one field, or nothing when it holds its proto3 default (0, "", false).
  Types: `:string`, `:bytes`, `:bool`, `:int32`, `:int64`, `:uint64`.
  """
  @spec field(pos_integer, atom, term) :: iodata
  def field(_num, _type, nil), do: []
  def field(_num, type, "") when type in [:string, :bytes], do: []
  def field(_num, :bool, false), do: []
  def field(_num, type, 0) when type in [:int32, :int64, :uint64], do: []
  def field(num, type, value) when type in [:string, :bytes], do: delimited(num, value)
  def field(num, :bool, true), do: [key(num, 0), 1]

  def field(num, type, value) when type in [:int64, :uint64, :int32] and value > 0,
    do: [key(num, 0) | varint(value)]

  # Negative int32/int64 values take ten octets: their 64-bit two's complement.
  def field(num, type, value) when type in [:int64, :int32],
    do: [key(num, 0) | varint(value &&& 0xFFFF_FFFF_FFFF_FFFF)]

  @doc "Encodes a length-delimited field (bytes, string, message) from iodata."
  @spec delimited(pos_integer, iodata) :: iodata
  def delimited(num, iodata), do: [key(num, 2), varint(IO.iodata_length(iodata)) | iodata]

  @doc "Encodes a `map<string, V>` field: one entry message per pair, in key order."
  @spec map_field(pos_integer, map, (term -> iodata)) :: iodata
  def map_field(num, map, encode_value) do
    map
    |> Enum.sort()
    |> Enum.map(fn {k, v} -> delimited(num, [field(1, :string, k), encode_value.(v)]) end)
  end

  @doc "The key octets of a field: number and wire type."
  @spec key(pos_integer, 0..5) :: binary
  def key(num, wire_type), do: varint(num <<< 3 ||| wire_type)

  ## Decoding

  @doc "Decodes a varint at the start of `bin`."
  @spec decode_varint(binary) :: {non_neg_integer, binary}
  def decode_varint(<<0::1, n::7, rest::binary>>), do: {n, rest}
  def decode_varint(<<1::1, a::7, 0::1, b::7, rest::binary>>), do: {a ||| b <<< 7, rest}
  def decode_varint(bin), do: decode_varint(bin, 0, 0)

  defp decode_varint(<<1::1, part::7, rest::binary>>, acc, shift) when shift < 63,
    do: decode_varint(rest, acc ||| part <<< shift, shift + 7)

  defp decode_varint(<<0::1, part::7, rest::binary>>, acc, shift),
    do: {(acc ||| part <<< shift) &&& 0xFFFF_FFFF_FFFF_FFFF, rest}

  defp decode_varint(_bin, _acc, _shift), do: raise(DecodeError, "truncated or overlong varint")

  @doc "Reads the length-delimited value at the start of `bin` (a sub-binary)."
  @spec decode_delimited(binary) :: {binary, binary}
  def decode_delimited(bin) do
    {length, rest} = decode_varint(bin)

    case rest do
      <<value::binary-size(length), rest::binary>> -> {value, rest}
      _ -> raise DecodeError, "truncated length-delimited field"
    end
  end

  @doc """
  Reads the next field of a message: its number, its raw value and the rest.
  Groups (wire types 3 and 4, deprecated) are refused.
  """
  @spec decode_field(binary) :: {pos_integer, raw, binary}
  def decode_field(bin) do
    {key, rest} = decode_varint(bin)
    num = key >>> 3

    case key &&& 7 do
      0 ->
        {value, rest} = decode_varint(rest)
        {num, {:varint, value}, rest}

      1 ->
        case rest do
          <<value::binary-size(8), rest::binary>> -> {num, {:fixed64, value}, rest}
          _ -> raise DecodeError, "truncated fixed64 field"
        end

      2 ->
        {value, rest} = decode_delimited(rest)
        {num, {:bytes, value}, rest}

      5 ->
        case rest do
          <<value::binary-size(4), rest::binary>> -> {num, {:fixed32, value}, rest}
          _ -> raise DecodeError, "truncated fixed32 field"
        end

      wire_type ->
        raise DecodeError, "unsupported wire type #{wire_type} (field #{num})"
    end
  end

  @doc """
  Skips the field at the start of `bin` (an unknown field) and returns the rest.
  """
  @spec skip_field(binary) :: binary
  def skip_field(bin), do: bin |> decode_field() |> elem(2)

  @doc """
  Interprets a raw value as a scalar of `type`. A varint field sent packed (as
  length-delimited varints) is accepted too: its last value wins, as for a repeated
  field read into a singular one. Returns `:skip` for a wire type that does not fit.
  """
  @spec scalar(raw, atom) :: term | :skip
  def scalar({:bytes, value}, type) when type in [:string, :bytes], do: value
  def scalar({:varint, v}, :bool), do: v != 0
  def scalar({:varint, v}, :uint64), do: v
  def scalar({:varint, v}, :int64), do: signed(v, 64)
  def scalar({:varint, v}, :int32), do: signed(v &&& 0xFFFF_FFFF, 32)

  def scalar({:bytes, packed}, type) when type in [:bool, :uint64, :int64, :int32] do
    case last_varint(packed, nil) do
      nil -> :skip
      v -> scalar({:varint, v}, type)
    end
  end

  def scalar(_raw, _type), do: :skip

  defp last_varint(<<>>, last), do: last

  defp last_varint(bin, _last) do
    {v, rest} = decode_varint(bin)
    last_varint(rest, v)
  end

  defp signed(v, bits) do
    if v >= 1 <<< (bits - 1), do: v - (1 <<< bits), else: v
  end

  @doc "Decodes a map entry message (key = 1, value = 2) with the value decoder given."
  @spec map_entry(binary, (raw -> term), term) :: {binary, term}
  def map_entry(bin, decode_value, default), do: map_entry(bin, decode_value, "", default)

  defp map_entry(<<>>, _decode_value, key, value), do: {key, value}

  defp map_entry(bin, decode_value, key, value) do
    case decode_field(bin) do
      {1, {:bytes, k}, rest} -> map_entry(rest, decode_value, k, value)
      {2, raw, rest} -> map_entry(rest, decode_value, key, decode_value.(raw))
      {_, _, rest} -> map_entry(rest, decode_value, key, value)
    end
  end
end
