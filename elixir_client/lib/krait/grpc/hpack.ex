defmodule Krait.GRPC.HPACK do
  @moduledoc """
  HPACK header compression (RFC 7541): one encoding or decoding context with its dynamic table.

  Hand-written because no HTTP/2 library is available here (Debian's cowlib 1.3 has no
  HPACK, hex.pm is unreachable). A connection keeps two contexts: one to encode the
  request headers it sends, one to decode the response headers it receives. grpc-core
  relies on the dynamic table for responses, so decoding implements it fully (insertion,
  eviction, size updates); `-bin` values arrive Huffman-coded (see `Krait.GRPC.Huffman`).

  The dynamic table is a map from an insertion counter to `{name, value}`, so looking up
  an index is O(1): dynamic index `i` (1-based, newest first) is insertion `count - i`.
  """

  import Bitwise

  alias Krait.GRPC.Huffman

  @static_table [
    {":authority", ""},
    {":method", "GET"},
    {":method", "POST"},
    {":path", "/"},
    {":path", "/index.html"},
    {":scheme", "http"},
    {":scheme", "https"},
    {":status", "200"},
    {":status", "204"},
    {":status", "206"},
    {":status", "304"},
    {":status", "400"},
    {":status", "404"},
    {":status", "500"},
    {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"},
    {"accept-language", ""},
    {"accept-ranges", ""},
    {"accept", ""},
    {"access-control-allow-origin", ""},
    {"age", ""},
    {"allow", ""},
    {"authorization", ""},
    {"cache-control", ""},
    {"content-disposition", ""},
    {"content-encoding", ""},
    {"content-language", ""},
    {"content-length", ""},
    {"content-location", ""},
    {"content-range", ""},
    {"content-type", ""},
    {"cookie", ""},
    {"date", ""},
    {"etag", ""},
    {"expect", ""},
    {"expires", ""},
    {"from", ""},
    {"host", ""},
    {"if-match", ""},
    {"if-modified-since", ""},
    {"if-none-match", ""},
    {"if-range", ""},
    {"if-unmodified-since", ""},
    {"last-modified", ""},
    {"link", ""},
    {"location", ""},
    {"max-forwards", ""},
    {"proxy-authenticate", ""},
    {"proxy-authorization", ""},
    {"range", ""},
    {"referer", ""},
    {"refresh", ""},
    {"retry-after", ""},
    {"server", ""},
    {"set-cookie", ""},
    {"strict-transport-security", ""},
    {"transfer-encoding", ""},
    {"user-agent", ""},
    {"vary", ""},
    {"via", ""},
    {"www-authenticate", ""}
  ]
  @static_size length(@static_table)
  @static_tuple List.to_tuple(@static_table)

  # For the encoder: first static index of each {name, value} and of each name.
  @static_pairs @static_table
                |> Enum.with_index(1)
                |> Enum.reverse()
                |> Map.new(fn {pair, i} -> {pair, i} end)
  @static_names @static_table
                |> Enum.with_index(1)
                |> Enum.reverse()
                |> Map.new(fn {{name, _}, i} -> {name, i} end)

  # Every entry costs its name and value plus 32 octets of overhead (RFC 7541 4.1).
  @entry_overhead 32

  defstruct entries: %{},
            count: 0,
            size: 0,
            max_size: 4096,
            limit: 4096,
            pending_update: nil,
            index: %{}

  @typedoc """
  An HPACK context. `max_size` is the current dynamic table size, `limit` the largest size
  allowed by the SETTINGS_HEADER_TABLE_SIZE in force; `pending_update` is a size change the
  encoder must announce at the start of its next header block; `index` maps a
  `{name, value}` to its latest insertion, for the encoder.
  """
  @type t :: %__MODULE__{
          entries: %{non_neg_integer => {binary, binary}},
          count: non_neg_integer,
          size: non_neg_integer,
          max_size: non_neg_integer,
          limit: non_neg_integer,
          pending_update: nil | non_neg_integer,
          index: %{{binary, binary} => non_neg_integer}
        }

  @typedoc "A header field; the optional third element says how the encoder may index it."
  @type header :: {binary, binary} | {binary, binary, :store | :no_store | :never_store}

  @doc "A new context whose dynamic table may hold `max_size` octets (4096 by default)."
  @spec new(non_neg_integer) :: t
  def new(max_size \\ 4096), do: %__MODULE__{max_size: max_size, limit: max_size}

  @doc """
  Changes the size of an encoding context's table, as a new SETTINGS_HEADER_TABLE_SIZE from
  the peer allows; the change is announced at the start of the next encoded block.
  """
  @spec resize_encoder(t, non_neg_integer) :: t
  def resize_encoder(%__MODULE__{} = table, new_size) do
    %{evict(%{table | max_size: new_size}) | limit: new_size, pending_update: new_size}
  end

  @doc "Current size in octets of the dynamic table (entries plus 32 octets each)."
  @spec table_size(t) :: non_neg_integer
  def table_size(%__MODULE__{size: size}), do: size

  @doc "The dynamic table's entries, newest first (index 62, 63, ...)."
  @spec entries(t) :: [{binary, binary}]
  def entries(%__MODULE__{entries: entries, count: count}) do
    for i <- (count - 1)..(count - map_size(entries))//-1, do: Map.fetch!(entries, i)
  end

  ## Decoding

  @doc """
  Decodes one complete header block (the joined HEADERS and CONTINUATION fragments).
  """
  @spec decode(binary, t) :: {:ok, [{binary, binary}], t} | {:error, term}
  def decode(block, %__MODULE__{} = table) when is_binary(block) do
    decode_fields(block, table, [], true)
  catch
    {:hpack_error, reason} -> {:error, reason}
  end

  defp decode_fields(<<>>, table, acc, _first?), do: {:ok, Enum.reverse(acc), table}

  # Indexed header field: 1xxxxxxx.
  defp decode_fields(<<1::1, rest::bits>>, table, acc, _first?) do
    {index, rest} = decode_int(rest, 7)
    decode_fields(rest, table, [lookup(table, index) | acc], false)
  end

  # Literal with incremental indexing: 01xxxxxx.
  defp decode_fields(<<0b01::2, rest::bits>>, table, acc, _first?) do
    {name, value, rest} = decode_literal(rest, 6, table)
    decode_fields(rest, add(table, name, value), [{name, value} | acc], false)
  end

  # Dynamic table size update: 001xxxxx, only allowed at the start of a block.
  defp decode_fields(<<0b001::3, rest::bits>>, table, acc, first?) do
    {size, rest} = decode_int(rest, 5)
    if not first?, do: throw({:hpack_error, :late_table_size_update})
    if size > table.limit, do: throw({:hpack_error, {:table_size_too_large, size}})
    decode_fields(rest, evict(%{table | max_size: size}), acc, true)
  end

  # Literal without indexing (0000xxxx) and never indexed (0001xxxx).
  defp decode_fields(<<0b000::3, _never::1, rest::bits>>, table, acc, _first?) do
    {name, value, rest} = decode_literal(rest, 4, table)
    decode_fields(rest, table, [{name, value} | acc], false)
  end

  defp decode_literal(bits, prefix, table) do
    {index, rest} = decode_int(bits, prefix)

    {name, rest} =
      case index do
        0 -> decode_string(rest)
        index -> {elem(lookup(table, index), 0), rest}
      end

    {value, rest} = decode_string(rest)
    {name, value, rest}
  end

  @doc false
  # Integer with an N-bit prefix (RFC 7541 5.1); `bits` starts at the prefix.
  @spec decode_int(bitstring, 1..8) :: {non_neg_integer, binary}
  def decode_int(bits, prefix) do
    max = (1 <<< prefix) - 1

    case bits do
      <<^max::size(prefix), rest::binary>> -> decode_int_tail(rest, max, 0)
      <<value::size(prefix), rest::binary>> -> {value, rest}
      _ -> throw({:hpack_error, :truncated_integer})
    end
  end

  defp decode_int_tail(<<1::1, part::7, rest::binary>>, acc, shift) when shift < 56,
    do: decode_int_tail(rest, acc + (part <<< shift), shift + 7)

  defp decode_int_tail(<<0::1, part::7, rest::binary>>, acc, shift),
    do: {acc + (part <<< shift), rest}

  defp decode_int_tail(_, _, _), do: throw({:hpack_error, :bad_integer})

  defp decode_string(<<huffman::1, rest::bits>>) do
    {length, rest} = decode_int(rest, 7)

    case rest do
      <<raw::binary-size(length), rest::binary>> when huffman == 0 ->
        {raw, rest}

      <<coded::binary-size(length), rest::binary>> ->
        case Huffman.decode(coded) do
          {:ok, plain} -> {plain, rest}
          {:error, reason} -> throw({:hpack_error, reason})
        end

      _ ->
        throw({:hpack_error, :truncated_string})
    end
  end

  defp decode_string(_), do: throw({:hpack_error, :truncated_string})

  defp lookup(_table, index) when index in 1..@static_size, do: elem(@static_tuple, index - 1)

  defp lookup(%__MODULE__{entries: entries, count: count}, index) when index > @static_size do
    case Map.fetch(entries, count - (index - @static_size)) do
      {:ok, entry} -> entry
      :error -> throw({:hpack_error, {:bad_index, index}})
    end
  end

  defp lookup(_table, index), do: throw({:hpack_error, {:bad_index, index}})

  ## Dynamic table

  # An entry larger than the whole table empties it and is not added (RFC 7541 4.4).
  defp add(table, name, value) do
    entry_size = byte_size(name) + byte_size(value) + @entry_overhead

    if entry_size > table.max_size do
      %{table | entries: %{}, size: 0, index: %{}}
    else
      %{
        table
        | entries: Map.put(table.entries, table.count, {name, value}),
          index: Map.put(table.index, {name, value}, table.count),
          count: table.count + 1,
          size: table.size + entry_size
      }
      |> evict()
    end
  end

  defp evict(%__MODULE__{size: size, max_size: max} = table) when size <= max, do: table

  defp evict(%__MODULE__{entries: entries, count: count} = table) do
    oldest = count - map_size(entries)
    {{name, value} = pair, entries} = Map.pop!(entries, oldest)

    index =
      case table.index do
        %{^pair => ^oldest} -> Map.delete(table.index, pair)
        index -> index
      end

    evict(%{
      table
      | entries: entries,
        index: index,
        size: table.size - byte_size(name) - byte_size(value) - @entry_overhead
    })
  end

  ## Encoding

  @doc """
  Encodes a header list into one header block.

  A field found whole in the static or dynamic table becomes an index. Otherwise it is a
  literal: added to the dynamic table (`:store`, the default), not added (`:no_store`, for
  values that change on every request such as `grpc-timeout`), or marked never to be
  indexed by intermediaries (`:never_store`, for secrets). Strings are Huffman-coded when
  that makes them no longer (`huffman: true` always, `huffman: false` never).
  """
  @spec encode([header], t, huffman: boolean | :auto) :: {iodata, t}
  def encode(headers, %__MODULE__{} = table, opts \\ []) do
    huffman = Keyword.get(opts, :huffman, :auto)

    {prefix, table} =
      case table.pending_update do
        nil -> {[], table}
        size -> {encode_int(size, 5, 0b001), %{table | pending_update: nil}}
      end

    {fields, table} = Enum.map_reduce(headers, table, &encode_field(&1, &2, huffman))
    {[prefix | fields], table}
  end

  defp encode_field({name, value}, table, huffman),
    do: encode_field({name, value, :store}, table, huffman)

  defp encode_field({name, value, mode}, table, huffman) do
    literal_head =
      case find(table, name, value) do
        {:full, index} -> {:indexed, encode_int(index, 7, 1)}
        {:name, index} -> encode_int(index, mode_prefix(mode), mode_bits(mode))
        :none -> [encode_int(0, mode_prefix(mode), mode_bits(mode)), encode_string(name, huffman)]
      end

    case {literal_head, mode} do
      {{:indexed, index}, _} -> {index, table}
      {head, :store} -> {[head | encode_string(value, huffman)], add(table, name, value)}
      {head, _} -> {[head | encode_string(value, huffman)], table}
    end
  end

  defp mode_prefix(:store), do: 6
  defp mode_prefix(_), do: 4
  defp mode_bits(:store), do: 0b01
  defp mode_bits(:no_store), do: 0b0000
  defp mode_bits(:never_store), do: 0b0001

  defp find(table, name, value) do
    case @static_pairs do
      %{{^name, ^value} => index} ->
        {:full, index}

      _ ->
        case table.index do
          %{{^name, ^value} => insertion} ->
            {:full, @static_size + table.count - insertion}

          _ ->
            case @static_names do
              %{^name => index} -> {:name, index}
              _ -> :none
            end
        end
    end
  end

  @doc false
  # Integer with an N-bit prefix whose high bits are `flags`.
  @spec encode_int(non_neg_integer, 1..8, non_neg_integer) :: binary
  def encode_int(value, prefix, flags) do
    max = (1 <<< prefix) - 1

    if value < max do
      <<flags::size(8 - prefix), value::size(prefix)>>
    else
      <<flags::size(8 - prefix), max::size(prefix), encode_int_tail(value - max)::binary>>
    end
  end

  defp encode_int_tail(value) when value < 128, do: <<value>>

  defp encode_int_tail(value),
    do: <<1::1, value &&& 127::7, encode_int_tail(value >>> 7)::binary>>

  defp encode_string(string, huffman) do
    huffman_size = Huffman.encoded_size(string)

    if huffman == true or (huffman == :auto and huffman_size <= byte_size(string)) do
      [encode_int(huffman_size, 7, 1), Huffman.encode(string)]
    else
      [encode_int(byte_size(string), 7, 0), string]
    end
  end
end
