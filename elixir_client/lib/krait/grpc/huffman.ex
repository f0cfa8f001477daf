defmodule Krait.GRPC.Huffman do
  @moduledoc """
  The static Huffman code of HPACK (RFC 7541, Appendix B): decoding and encoding.

  Hand-written because no HTTP/2 library is available here (Debian's cowlib 1.3 has no
  HPACK, hex.pm is unreachable). grpc-core Huffman-codes the values of `-bin` headers such
  as `grpc-status-details-bin`, so the decoder is required; the encoder is used for header
  values it makes shorter.

  The HPACK code is canonical: the code of every symbol follows from the code lengths
  alone (sort symbols by length, then by value, and count upwards), so only the lengths
  of Appendix B are written down here and the codes are computed at compile time.
  """

  import Bitwise

  # Code length in bits of symbols 0..255 (16 a row: 0-15, 16-31, ...) and of EOS (256),
  # from RFC 7541 Appendix B.
  @lengths ~w(
    13 23 28 28 28 28 28 28 28 24 30 28 28 30 28 28
    28 28 28 28 28 28 30 28 28 28 28 28 28 28 28 28
     6 10 10 12 13  6  8 11 10 10  8 11  8  6  6  6
     5  5  5  6  6  6  6  6  6  6  7  8 15  6 12 10
    13  6  7  7  7  7  7  7  7  7  7  7  7  7  7  7
     7  7  7  7  7  7  7  7  8  7  8 13 19 13 14  6
    15  5  6  5  6  5  6  6  6  5  7  7  6  6  6  5
     6  7  6  5  5  6  7  7  7  7  7 15 11 14 13 28
    20 22 20 20 22 22 22 23 22 23 23 23 23 23 24 23
    24 24 22 23 24 23 23 23 23 21 22 23 22 23 23 24
    22 21 20 22 22 23 23 21 23 22 22 24 21 22 23 23
    21 21 22 21 23 22 23 23 20 22 22 22 23 22 22 23
    26 26 20 19 22 23 22 25 26 26 26 27 27 26 24 25
    19 21 26 27 27 26 27 24 21 21 26 26 28 27 27 27
    20 24 20 21 22 21 21 23 22 22 25 25 24 24 26 23
    26 27 26 26 27 27 27 27 27 28 27 27 27 27 27 26
    30
  ) |> Enum.map(&String.to_integer/1)

  # Canonical code assignment: {symbol, code, length} for all 257 symbols.
  @codes @lengths
         |> Enum.with_index()
         |> Enum.sort_by(fn {len, sym} -> {len, sym} end)
         |> Enum.map_reduce({0, 5}, fn {len, sym}, {next, prev_len} ->
           code = next <<< (len - prev_len)
           {{sym, code, len}, {code + 1, len}}
         end)
         |> elem(0)
         |> Enum.sort()

  @encode_table @codes
                |> Enum.take(256)
                |> Enum.map(fn {_, c, l} -> {c, l} end)
                |> List.to_tuple()

  @doc """
  Decodes a Huffman-coded string.

  Fails on the EOS symbol, on padding longer than 7 bits and on padding that is not a
  prefix of EOS (all ones), as RFC 7541 section 5.2 requires.
  """
  @spec decode(binary) :: {:ok, binary} | {:error, :invalid_huffman}
  def decode(encoded) when is_binary(encoded), do: do_decode(encoded, <<>>)

  # One clause per symbol: the compiler turns the bit patterns into a decision tree.
  for {sym, code, len} <- @codes, sym < 256 do
    defp do_decode(<<unquote(code)::size(unquote(len)), rest::bits>>, acc),
      do: do_decode(rest, <<acc::binary, unquote(sym)>>)
  end

  defp do_decode(<<>>, acc), do: {:ok, acc}

  defp do_decode(padding, acc) when bit_size(padding) < 8 do
    size = bit_size(padding)
    ones = (1 <<< size) - 1

    case padding do
      <<^ones::size(size)>> -> {:ok, acc}
      _ -> {:error, :invalid_huffman}
    end
  end

  defp do_decode(_bits, _acc), do: {:error, :invalid_huffman}

  @doc "Huffman-codes a string, padding the last byte with ones (a prefix of EOS)."
  @spec encode(binary) :: binary
  def encode(plain) when is_binary(plain), do: do_encode(plain, <<>>)

  defp do_encode(<<byte, rest::binary>>, acc) do
    {code, len} = elem(@encode_table, byte)
    do_encode(rest, <<acc::bits, code::size(len)>>)
  end

  defp do_encode(<<>>, acc) do
    pad = rem(8 - rem(bit_size(acc), 8), 8)
    <<acc::bits, (1 <<< pad) - 1::size(pad)>>
  end

  @doc "The length in bytes of `plain` once Huffman-coded, without coding it."
  @spec encoded_size(binary) :: non_neg_integer
  def encoded_size(plain) when is_binary(plain), do: div(bits(plain, 0) + 7, 8)

  defp bits(<<byte, rest::binary>>, acc), do: bits(rest, acc + elem(elem(@encode_table, byte), 1))
  defp bits(<<>>, acc), do: acc
end
