defmodule Krait.GRPC.MessageBufferTest do
  @moduledoc "gRPC message reassembly across DATA frames."
  use ExUnit.Case, async: true

  alias Krait.GRPC.MessageBuffer

  defp framed(payload), do: <<0, byte_size(payload)::32, payload::binary>>

  # Feeds `bytes` in pieces of the given sizes and collects every message.
  defp feed(bytes, sizes) do
    {pieces, rest} =
      Enum.map_reduce(sizes, bytes, fn size, rest ->
        size = min(size, byte_size(rest))
        <<piece::binary-size(size), rest::binary>> = rest
        {piece, rest}
      end)

    Enum.reduce(pieces ++ [rest], {[], 0, MessageBuffer.new()}, fn piece, {acc, n, buffer} ->
      {:ok, messages, bytes, buffer} = MessageBuffer.push(buffer, piece)
      {acc ++ messages, n + bytes, buffer}
    end)
  end

  test "several messages in one frame, returned in order with their flow-controlled size" do
    bytes = framed("a") <> framed("") <> framed("ccc")
    assert {["a", "", "ccc"], 19, buffer} = feed(bytes, [])
    assert MessageBuffer.empty?(buffer)
  end

  test "a message in one frame is a sub-binary of that frame" do
    frame = framed(String.duplicate("x", 1000))
    {:ok, [message], 1005, _} = MessageBuffer.push(MessageBuffer.new(), frame)
    assert :binary.referenced_byte_size(message) == byte_size(frame)
  end

  test "messages split anywhere, including inside the 5-octet prefix" do
    payloads = for i <- 1..20, do: :crypto.strong_rand_bytes(i * 37)
    bytes = Enum.map_join(payloads, &framed/1)

    for split <- [[1], [2, 1, 1, 1], [3, 4, 500], [5], [6, 7, 8, 9, 10], List.duplicate(13, 400)] do
      {messages, count, buffer} = feed(bytes, split)
      assert messages == payloads
      assert count == byte_size(bytes)
      assert MessageBuffer.empty?(buffer)
    end
  end

  # how fast the join is, is measured by scripts/bench
  test "a 1 MiB message arriving as 64 frames of 16 KiB is reassembled whole" do
    payload = :crypto.strong_rand_bytes(1024 * 1024)
    bytes = framed(payload)
    sizes = List.duplicate(16_384, 64)
    assert {[^payload], _, _} = feed(bytes, sizes)
  end

  test "partial messages report what they hold" do
    {:ok, [], 0, buffer} = MessageBuffer.push(MessageBuffer.new(), <<0, 0, 0>>)
    assert MessageBuffer.buffered(buffer) == 3
    {:ok, [], 0, buffer} = MessageBuffer.push(buffer, <<0, 10, "abcd">>)
    assert MessageBuffer.buffered(buffer) == 9
    refute MessageBuffer.empty?(buffer)
  end

  test "compressed messages are refused" do
    assert {:error, :compressed_message} =
             MessageBuffer.push(MessageBuffer.new(), <<1, 0, 0, 0, 1, "x">>)
  end
end
