defmodule Krait.GRPC.StreamTest do
  @moduledoc "Per-stream flow control: eager for unary, acknowledgement-driven for streams."
  use ExUnit.Case, async: true

  alias Krait.GRPC.Stream

  @window 64 * 1024

  defp framed(payload), do: <<0, byte_size(payload)::32, payload::binary>>

  defp stream(kind), do: Stream.new(id: 1, kind: kind, window: @window, recv_window: @window)

  defp receive_all(stream, bytes, frame_size \\ 16_384) do
    chunk_stream(bytes, frame_size)
    |> Enum.reduce({stream, [], 0}, fn piece, {s, msgs, n} ->
      {:ok, m, b, s} = Stream.receive_data(s, piece, byte_size(piece))
      {s, msgs ++ m, n + b}
    end)
  end

  defp chunk_stream(<<>>, _), do: []

  defp chunk_stream(bytes, size) when byte_size(bytes) <= size, do: [bytes]

  defp chunk_stream(bytes, size) do
    <<piece::binary-size(size), rest::binary>> = bytes
    [piece | chunk_stream(rest, size)]
  end

  test "unary returns every received byte, once a quarter of the window is due" do
    {s, [_], _} = receive_all(stream(:unary), framed(:binary.copy("x", 20_000)))
    assert {20_005, s} = Stream.take_window_update(s)
    assert s.recv_window == @window
    {s, [_], _} = receive_all(s, framed("small"))
    assert {0, _} = Stream.take_window_update(s)
  end

  test "a stream returns window only for acknowledged bytes" do
    payload = :binary.copy("y", 10_000)

    {s, messages, bytes} =
      receive_all(stream(:stream), IO.iodata_to_binary(List.duplicate(framed(payload), 3)))

    assert length(messages) == 3 and bytes == 30_015
    assert {0, s} = Stream.take_window_update(s)
    assert s.recv_window == @window - 30_015

    s = Stream.ack(s, 10_005)
    assert {0, s} = Stream.take_window_update(s)
    s = Stream.ack(s, 20_010)
    assert {30_015, s} = Stream.take_window_update(s)
    assert s.recv_window == @window
  end

  test "padding is returned without waiting for the owner" do
    s = stream(:stream)
    {:ok, [], 0, s} = Stream.receive_data(s, "", 20_000)
    assert {20_000, _} = Stream.take_window_update(s)
  end

  test "a message larger than the window completes by borrowing once the owner caught up" do
    big = framed(:crypto.strong_rand_bytes(3 * @window))
    pieces = chunk_stream(big, 16_384)

    # Feed only as much as the window the server would have.
    {s, delivered} =
      Enum.reduce(pieces, {stream(:stream), []}, fn piece, {s, acc} ->
        assert s.recv_window >= byte_size(piece), "server would be blocked: no window"
        {:ok, msgs, _bytes, s} = Stream.receive_data(s, piece, byte_size(piece))
        {increment, s} = Stream.take_window_update(s)
        assert increment >= 0
        {s, acc ++ msgs}
      end)

    assert [message] = delivered
    assert byte_size(message) == 3 * @window
    # The owner acknowledges: the loan is paid back first, so the window never exceeds its size.
    s = Stream.ack(s, byte_size(big))
    {_, s} = Stream.take_window_update(s)
    assert s.recv_window + s.returnable == @window
    assert s.loan == 0
  end

  test "nothing is lent while the owner holds unacknowledged messages" do
    {s, [_], _} = receive_all(stream(:stream), framed(:binary.copy("a", 20_000)))
    # Most of a big message: more than half the window, but the first one is not acked.
    partial = binary_part(framed(:binary.copy("b", 100_000)), 0, 40_000)
    {s, [], 0} = receive_all(s, partial)
    assert s.loan == 0
    assert s.recv_window == @window - 60_005
    # Once the owner acks, the partial message is lent and the window opens again.
    s = Stream.ack(s, 20_005)
    assert s.loan == 40_000
    assert {60_005, _} = Stream.take_window_update(s)
  end

  test "request bytes are taken in pieces without copying" do
    body = :crypto.strong_rand_bytes(100)
    s = Stream.enqueue(stream(:unary), [<<0, 100::32>>, body])
    assert s.send_size == 105
    {data, 50, s} = Stream.take_send(s, 50)
    {rest, 55, s} = Stream.take_send(s, 1000)
    assert IO.iodata_to_binary([data, rest]) == <<0, 100::32, body::binary>>
    assert s.send_size == 0
  end
end
