defmodule Krait.GRPC.HPACKTest do
  @moduledoc "HPACK and Huffman against the examples of RFC 7541 Appendix C."
  use ExUnit.Case, async: true

  alias Krait.GRPC.{HPACK, Huffman}

  defp hex(string), do: string |> String.replace(~r/\s+/, "") |> Base.decode16!(case: :lower)

  # Decodes each block in turn with one context, checking headers and the dynamic table.
  defp decode_sequence(table, steps) do
    Enum.reduce(steps, table, fn {block, headers, entries, size}, table ->
      assert {:ok, ^headers, table} = HPACK.decode(hex(block), table)
      assert HPACK.entries(table) == entries
      assert HPACK.table_size(table) == size
      table
    end)
  end

  # Encodes each header list in turn with one context and checks the exact bytes.
  defp encode_sequence(table, steps, opts \\ []) do
    Enum.reduce(steps, table, fn {block, headers, entries, _size}, table ->
      {iodata, table} = HPACK.encode(headers, table, opts)
      assert IO.iodata_to_binary(iodata) == hex(block)
      assert HPACK.entries(table) == entries
      table
    end)
  end

  describe "integers (C.1)" do
    test "10 with a 5-bit prefix, 1337 with a 5-bit prefix, 42 on 8 bits" do
      assert HPACK.encode_int(10, 5, 0) == <<0b01010>>
      assert HPACK.encode_int(1337, 5, 0) == <<31, 154, 10>>
      assert HPACK.encode_int(42, 8, 0) == <<42>>
      assert {1337, ""} = HPACK.decode_int(<<31::5, 154, 10>>, 5)
      assert {10, "x"} = HPACK.decode_int(<<10::5, "x">>, 5)
    end
  end

  describe "header field representations (C.2)" do
    test "C.2.1 literal with indexing" do
      steps = [
        {"400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
         [{"custom-key", "custom-header"}], [{"custom-key", "custom-header"}], 55}
      ]

      decode_sequence(HPACK.new(), steps)
      encode_sequence(HPACK.new(), steps, huffman: false)
    end

    test "C.2.2 literal without indexing" do
      decode_sequence(HPACK.new(), [
        {"040c 2f73 616d 706c 652f 7061 7468", [{":path", "/sample/path"}], [], 0}
      ])

      {iodata, table} =
        HPACK.encode([{":path", "/sample/path", :no_store}], HPACK.new(), huffman: false)

      assert IO.iodata_to_binary(iodata) == hex("040c 2f73 616d 706c 652f 7061 7468")
      assert HPACK.entries(table) == []
    end

    test "C.2.3 literal never indexed" do
      block = "1008 7061 7373 776f 7264 0673 6563 7265 74"
      decode_sequence(HPACK.new(), [{block, [{"password", "secret"}], [], 0}])

      {iodata, _} =
        HPACK.encode([{"password", "secret", :never_store}], HPACK.new(), huffman: false)

      assert IO.iodata_to_binary(iodata) == hex(block)
    end

    test "C.2.4 indexed field" do
      decode_sequence(HPACK.new(), [{"82", [{":method", "GET"}], [], 0}])
      {iodata, _} = HPACK.encode([{":method", "GET"}], HPACK.new())
      assert IO.iodata_to_binary(iodata) == hex("82")
    end
  end

  @requests [
    {[{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "www.example.com"}],
     [{":authority", "www.example.com"}], 57},
    {[
       {":method", "GET"},
       {":scheme", "http"},
       {":path", "/"},
       {":authority", "www.example.com"},
       {"cache-control", "no-cache"}
     ], [{"cache-control", "no-cache"}, {":authority", "www.example.com"}], 110},
    {[
       {":method", "GET"},
       {":scheme", "https"},
       {":path", "/index.html"},
       {":authority", "www.example.com"},
       {"custom-key", "custom-value"}
     ],
     [
       {"custom-key", "custom-value"},
       {"cache-control", "no-cache"},
       {":authority", "www.example.com"}
     ], 164}
  ]

  describe "requests (C.3 without Huffman, C.4 with Huffman)" do
    test "C.3 decodes and encodes three requests sharing a dynamic table" do
      blocks = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"
      ]

      steps = Enum.zip_with(blocks, @requests, fn b, {h, e, s} -> {b, h, e, s} end)
      decode_sequence(HPACK.new(), steps)
      encode_sequence(HPACK.new(), steps, huffman: false)
    end

    test "C.4 decodes and encodes three Huffman-coded requests byte for byte" do
      blocks = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
      ]

      steps = Enum.zip_with(blocks, @requests, fn b, {h, e, s} -> {b, h, e, s} end)
      decode_sequence(HPACK.new(), steps)
      # Our encoder Huffman-codes whatever gets shorter and indexes everything: the RFC's choice.
      encode_sequence(HPACK.new(), steps)
    end
  end

  @date1 "Mon, 21 Oct 2013 20:13:21 GMT"
  @date2 "Mon, 21 Oct 2013 20:13:22 GMT"
  @loc "https://www.example.com"
  @cookie "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"

  @responses [
    {[{":status", "302"}, {"cache-control", "private"}, {"date", @date1}, {"location", @loc}],
     [
       {"location", @loc},
       {"date", @date1},
       {"cache-control", "private"},
       {":status", "302"}
     ], 222},
    {[{":status", "307"}, {"cache-control", "private"}, {"date", @date1}, {"location", @loc}],
     [
       {":status", "307"},
       {"location", @loc},
       {"date", @date1},
       {"cache-control", "private"}
     ], 222},
    {[
       {":status", "200"},
       {"cache-control", "private"},
       {"date", @date2},
       {"location", @loc},
       {"content-encoding", "gzip"},
       {"set-cookie", @cookie}
     ], [{"set-cookie", @cookie}, {"content-encoding", "gzip"}, {"date", @date2}], 215}
  ]

  describe "responses with a 256-octet table and eviction (C.5, C.6)" do
    test "C.5 without Huffman, decoded and encoded byte for byte" do
      blocks = [
        """
        4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
        2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
        6c65 2e63 6f6d
        """,
        "4803 3330 37c1 c0bf",
        """
        88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
        54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
        5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
        3d31
        """
      ]

      steps = Enum.zip_with(blocks, @responses, fn b, {h, e, s} -> {b, h, e, s} end)
      decode_sequence(HPACK.new(256), steps)
      encode_sequence(HPACK.new(256), steps, huffman: false)
    end

    test "C.6 with Huffman, decoded and encoded byte for byte" do
      blocks = [
        """
        4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
        2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3
        """,
        "4883 640e ffc1 c0bf",
        """
        88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
        77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
        9587 3160 65c0 03ed 4ee5 b106 3d50 07
        """
      ]

      steps = Enum.zip_with(blocks, @responses, fn b, {h, e, s} -> {b, h, e, s} end)
      decode_sequence(HPACK.new(256), steps)
      encode_sequence(HPACK.new(256), steps)
    end
  end

  describe "dynamic table size" do
    test "a size update at the start of a block shrinks and evicts; above the limit it fails" do
      {:ok, _, table} =
        HPACK.decode(
          hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
          HPACK.new()
        )

      assert HPACK.table_size(table) == 55
      # 001 00000: size 0, evicting everything; then an indexed static field.
      assert {:ok, [{":method", "GET"}], table} = HPACK.decode(<<0x20, 0x82>>, table)
      assert HPACK.entries(table) == []

      assert {:error, {:table_size_too_large, 8192}} =
               HPACK.decode(IO.iodata_to_binary([HPACK.encode_int(8192, 5, 1)]), table)

      assert {:error, :late_table_size_update} = HPACK.decode(<<0x82, 0x20>>, table)
    end

    test "the encoder announces a resize in its next block and the decoder follows" do
      {block, enc} = HPACK.encode([{"x-a", String.duplicate("a", 100)}], HPACK.new())
      {:ok, _, dec} = HPACK.decode(IO.iodata_to_binary(block), HPACK.new())
      enc = HPACK.resize_encoder(enc, 64)
      {block, enc} = HPACK.encode([{"x-b", "b"}], enc)
      assert <<0b001::3, _::bits>> = IO.iodata_to_binary(block)
      {:ok, [{"x-b", "b"}], dec} = HPACK.decode(IO.iodata_to_binary(block), dec)
      assert HPACK.entries(dec) == HPACK.entries(enc)
      assert HPACK.entries(dec) == [{"x-b", "b"}]
    end

    test "an entry larger than the table empties it" do
      {block, enc} =
        HPACK.encode([{"k", "v"}, {"big", String.duplicate("z", 300)}], HPACK.new(256))

      assert HPACK.entries(enc) == []

      assert {:ok, [{"k", "v"}, {"big", _}], dec} =
               HPACK.decode(IO.iodata_to_binary(block), HPACK.new(256))

      assert HPACK.entries(dec) == []
    end

    test "an index past the table fails" do
      assert {:error, {:bad_index, 62}} = HPACK.decode(<<0xBE>>, HPACK.new())
      assert {:error, {:bad_index, 0}} = HPACK.decode(<<0x80>>, HPACK.new())
      assert {:error, :truncated_string} = HPACK.decode(<<0x40, 0x0A, "abc">>, HPACK.new())
    end

    test "encoder and decoder stay in step over many blocks with eviction" do
      lists =
        for i <- 1..300 do
          [
            {":path", "/svc/M#{rem(i, 7)}"},
            {"grpc-timeout", "#{i}m", :no_store},
            {"x-key-#{rem(i, 40)}", "value #{i}"}
          ]
        end

      Enum.reduce(lists, {HPACK.new(), HPACK.new()}, fn headers, {enc, dec} ->
        {block, enc} = HPACK.encode(headers, enc)
        {:ok, decoded, dec} = HPACK.decode(IO.iodata_to_binary(block), dec)
        assert decoded == Enum.map(headers, fn h -> {elem(h, 0), elem(h, 1)} end)
        assert HPACK.entries(enc) == HPACK.entries(dec)
        assert HPACK.table_size(dec) <= 4096
        {enc, dec}
      end)
    end
  end

  describe "Huffman" do
    test "round trips every octet and random strings" do
      all = for b <- 0..255, into: <<>>, do: <<b>>
      assert {:ok, ^all} = Huffman.decode(Huffman.encode(all))

      for _ <- 1..200 do
        s = :crypto.strong_rand_bytes(:rand.uniform(64))
        assert {:ok, ^s} = Huffman.decode(Huffman.encode(s))
        assert Huffman.encoded_size(s) == byte_size(Huffman.encode(s))
      end
    end

    test "codes from RFC 7541 Appendix B" do
      assert Huffman.encode("www.example.com") == hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
      assert Huffman.encode("no-cache") == hex("a8eb 1064 9cbf")
      # symbol 0 is 13 bits 1111111111000; padded with three ones
      assert Huffman.encode(<<0>>) == <<0b11111111, 0b11000111>>
    end

    test "the canonical codes computed from the lengths are Appendix B's" do
      # {symbol, code as hex aligned to the LSB, length}, rows of the RFC's table.
      rows = [
        {0, 0x1FF8, 13},
        {1, 0x7FFFD8, 23},
        {10, 0x3FFFFFFC, 30},
        {36, 0x1FF9, 13},
        {47, 0x18, 6},
        {60, 0x7FFC, 15},
        {92, 0x7FFF0, 19},
        {126, 0x1FFD, 13},
        {128, 0xFFFE6, 20},
        {153, 0x1FFFDC, 21},
        {171, 0xFFFFF0, 24},
        {199, 0x1FFFFEC, 25},
        {203, 0x7FFFFDE, 27},
        {209, 0x1FFFE3, 21},
        {220, 0xFFFFFFD, 28},
        {239, 0x7FFFF4, 23},
        {242, 0x3FFFFEC, 26},
        {249, 0xFFFFFFE, 28},
        {254, 0x7FFFFF0, 27},
        {255, 0x3FFFFEE, 26}
      ]

      for {symbol, code, length} <- rows do
        encoded = Huffman.encode(<<symbol>>)
        size = bit_size(encoded)
        <<value::size(size)>> = encoded
        assert Bitwise.bsr(value, size - length) == code, "symbol #{symbol}"
      end
    end

    test "rejects padding longer than 7 bits, non-EOS padding and EOS itself" do
      assert {:error, :invalid_huffman} = Huffman.decode(<<0xFF, 0xFF>>)
      # '0' is 00000; padding 000 is not a prefix of EOS.
      assert {:error, :invalid_huffman} = Huffman.decode(<<0b00000000>>)
      assert {:ok, "0"} = Huffman.decode(<<0b00000111>>)
      assert {:error, :invalid_huffman} = Huffman.decode(<<0xFF, 0xFF, 0xFF, 0xFC>>)
    end

    test "decodes Huffman-coded unpadded base64 as grpc-core sends -bin values" do
      raw = :crypto.strong_rand_bytes(300)
      b64 = Base.encode64(raw, padding: false)
      {:ok, decoded} = Huffman.decode(Huffman.encode(b64))
      assert Base.decode64!(decoded, padding: false) == raw
    end
  end
end
