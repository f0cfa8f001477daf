defmodule Krait.GRPC.FrameTest do
  @moduledoc "HTTP/2 frame codec: round trips, padding, priority, errors."
  use ExUnit.Case, async: true

  alias Krait.GRPC.Frame

  defp roundtrip(frame) do
    bin = IO.iodata_to_binary(Frame.encode(frame))
    assert {:ok, decoded, "rest"} = Frame.decode(bin <> "rest", 16_384)
    decoded
  end

  test "every frame type round trips" do
    assert {:data, 1, "hello", true, 5} = roundtrip({:data, 1, "hello", true})
    assert {:data, 3, "", false, 0} = roundtrip({:data, 3, [], false})
    assert {:headers, 5, "block", true, false} = roundtrip({:headers, 5, "block", true, false})
    assert {:continuation, 5, "more", true} = roundtrip({:continuation, 5, "more", true})

    assert {:settings, false, [{4, 4_194_304}, {5, 16_384}]} =
             roundtrip({:settings, false, [{4, 4_194_304}, {5, 16_384}]})

    assert {:settings, true, []} = roundtrip({:settings, true, []})
    assert {:ping, true, "12345678"} = roundtrip({:ping, true, "12345678"})
    assert {:goaway, 7, 2, "bye"} = roundtrip({:goaway, 7, 2, "bye"})
    assert {:rst_stream, 9, 8} = roundtrip({:rst_stream, 9, 8})
    assert {:window_update, 0, 1_000_000} = roundtrip({:window_update, 0, 1_000_000})
    assert {:priority, 11} = roundtrip({:priority, 11})
  end

  test "the frame header is laid out as RFC 9113 4.1 says" do
    assert IO.iodata_to_binary(Frame.encode({:data, 1, "abc", true})) ==
             <<3::24, 0, 1, 0::1, 1::31, "abc">>

    assert IO.iodata_to_binary(Frame.encode({:window_update, 3, 10})) ==
             <<4::24, 8, 0, 0::1, 3::31, 0::1, 10::31>>
  end

  test "padding is stripped from DATA and HEADERS but counted in DATA's flow length" do
    padded = <<4, "data", 0, 0, 0, 0>>
    bin = <<byte_size(padded)::24, 0, 0x8 + 0x1, 0::1, 1::31, padded::binary>>
    assert {:ok, {:data, 1, "data", true, 9}, ""} = Frame.decode(bin, 16_384)

    # PADDED and PRIORITY: pad length, 5 octets of priority, fragment, padding.
    payload = <<2, 0::1, 0::31, 16, "frag", 0, 0>>
    bin = <<byte_size(payload)::24, 1, 0x8 + 0x20 + 0x4, 0::1, 3::31, payload::binary>>
    assert {:ok, {:headers, 3, "frag", false, true}, ""} = Frame.decode(bin, 16_384)
  end

  test "padding longer than the payload is a protocol error" do
    bin = <<2::24, 0, 0x8, 0::1, 1::31, 5, "x">>
    assert {:error, {:protocol_error, :bad_padding}} = Frame.decode(bin, 16_384)
  end

  test "incomplete input asks for more, with the total size once the header is known" do
    bin = IO.iodata_to_binary(Frame.encode({:data, 1, String.duplicate("x", 100), false}))
    assert :more = Frame.decode(binary_part(bin, 0, 5), 16_384)
    assert {:more, 109} = Frame.decode(binary_part(bin, 0, 50), 16_384)
  end

  test "size and shape errors" do
    big = <<20_000::24, 0, 0, 0::1, 1::31>>
    assert {:error, {:frame_size_error, {:frame_too_large, 20_000}}} = Frame.decode(big, 16_384)

    assert {:error, {:frame_size_error, :ping}} =
             Frame.decode(<<4::24, 6, 0, 0::32, "abcd">>, 16_384)

    assert {:error, {:frame_size_error, :settings}} =
             Frame.decode(<<5::24, 4, 0, 0::32, "abcde">>, 16_384)

    assert {:error, {:protocol_error, :data_on_stream_0}} =
             Frame.decode(<<0::24, 0, 0, 0::32>>, 16_384)

    assert {:error, {:protocol_error, {:zero_window_update, 1}}} =
             Frame.decode(<<4::24, 8, 0, 1::32, 0::32>>, 16_384)
  end

  test "unknown frame types are decoded as :unknown so they can be ignored" do
    assert {:ok, {:unknown, 0xFA, 1}, ""} = Frame.decode(<<3::24, 0xFA, 0, 1::32, "abc">>, 16_384)
  end

  test "the preface is the RFC's" do
    assert Frame.preface() == "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
  end
end
