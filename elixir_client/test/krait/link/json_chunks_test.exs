defmodule Krait.Link.JsonChunksTest do
  # A batched stream's plain JSON chunks come over the link as JSON_CHUNKS frames: one JSON array per
  # run, its first chunk's seq in `first_seq`. The frame decodes with or without that field (0 is not
  # written), the array becomes chunks numbered from it, and a link stream's callers see the very chunks
  # gRPC gives (transport_test); here, that the link really sends the form, in order and within credit.
  use ExUnit.Case, async: true

  import Bitwise
  import Krait.TestHelpers

  alias Krait.Chunk
  alias Krait.Link.Frame
  alias Krait.Proto.Wire

  @moduletag timeout: 120_000

  @stream "/krait.v1.ToolWorker/ExecuteStreamingToolBatched"

  defp packet(fields), do: IO.iodata_to_binary(fields)

  describe "Frame.decode/1" do
    test "a JSON_CHUNKS frame is {:json_chunks, call_id, {first_seq, array}}" do
      for seq <- [1, 127, 128, 300, 16_384, 1 <<< 40] do
        bin =
          packet([
            Wire.field(1, :uint64, 7),
            Wire.field(2, :uint64, 13),
            Wire.field(9, :uint64, seq),
            Wire.delimited(5, "[1,2]")
          ])

        assert Frame.decode(bin) == {:json_chunks, 7, {seq, "[1,2]"}}
      end
    end

    test "first_seq 0 is not written, and fields may come in any order" do
      zero =
        packet([Wire.field(1, :uint64, 3), Wire.field(2, :uint64, 13), Wire.delimited(5, "[{}]")])

      assert Frame.decode(zero) == {:json_chunks, 3, {0, "[{}]"}}

      reordered =
        packet([
          Wire.delimited(5, "[true]"),
          Wire.field(9, :uint64, 12),
          Wire.field(2, :uint64, 13),
          Wire.field(1, :uint64, 300)
        ])

      assert Frame.decode(reordered) == {:json_chunks, 300, {12, "[true]"}}
    end

    test "other frames are as before, a first_seq on them ignored" do
      message =
        packet([
          Wire.field(1, :uint64, 9),
          Wire.field(2, :uint64, 3),
          Wire.field(9, :uint64, 5),
          Wire.delimited(5, "abc")
        ])

      assert Frame.decode(message) == {:message, 9, "abc"}
    end
  end

  describe "Chunk.from_json_array/2" do
    test "the elements are the chunks first_seq, first_seq + 1... in order" do
      assert {:ok, chunks} = Chunk.from_json_array(41, ~s([{"i":0},"x",null,[1,2.5]]))

      assert chunks == [
               %Chunk{seq: 41, data: %{"i" => 0}, content_type: "application/json"},
               %Chunk{seq: 42, data: "x", content_type: "application/json"},
               %Chunk{seq: 43, data: nil, content_type: "application/json"},
               %Chunk{seq: 44, data: [1, 2.5], content_type: "application/json"}
             ]

      assert Enum.all?(chunks, &(&1.is_final == false and &1.metadata == %{}))
    end

    test "what is not a non-empty JSON array is a protocol error" do
      for bad <- ["[1,", "{}", "[]", "1", ""] do
        assert {:error, "invalid JSON payload"} = Chunk.from_json_array(0, bad)
      end
    end
  end

  defp request(tool, args) do
    Krait.Proto.ExecuteToolRequest.encode(%Krait.Proto.ExecuteToolRequest{
      tool_name: tool,
      args_json: IO.iodata_to_binary(Krait.JSON.encode!(args))
    })
  end

  defp deliveries(sref, pid, acc) do
    receive do
      {:krait_stream, ^sref, {:messages, payloads, bytes}} ->
        Krait.Link.ack(pid, sref, bytes)
        deliveries(sref, pid, [{payloads, bytes} | acc])

      {:krait_stream, ^sref, {:done, result}} ->
        {Enum.reverse(acc), result}
    after
      20_000 -> flunk("the stream did not end")
    end
  end

  test "a link stream's small chunks come as arrays numbered in order, bytes counted as sent" do
    pool = start_pool!(size: 1, transport: :link)
    [%{pid: pid}] = Krait.Pool.stats(pool).workers
    count = 20_000

    {:ok, sref} =
      Krait.Link.start_stream(pid, @stream, request("stream_small", %{count: count}), [])

    {deliveries, result} = deliveries(sref, pid, [])
    assert result == :ok

    arrays = for {payloads, _} <- deliveries, {:json_chunks, _, _} = p <- payloads, do: p
    assert length(arrays) >= 1

    for {payloads, bytes} <- deliveries do
      assert bytes == payloads |> Enum.map(&payload_bytes/1) |> Enum.sum()
    end

    # every array's chunks follow the previous ones: the seqs are 0..count-1 with no gap or repeat
    seqs =
      for {:json_chunks, first, array} <- arrays,
          {:ok, chunks} = Chunk.from_json_array(first, array),
          chunk <- chunks,
          do: chunk.seq

    assert seqs == Enum.to_list(0..(count - 1))

    # and the same chunks reach a callback as over gRPC
    test = self()

    assert :ok =
             Krait.execute_stream("stream_small", %{count: 300}, &send(test, {:c, &1}), pool: pool)

    got =
      for _ <- 1..301 do
        assert_receive {:c, %Chunk{} = c}, 5_000
        c
      end

    assert Enum.map(got, & &1.seq) == Enum.to_list(0..300)
    assert List.last(got).is_final
  end

  defp payload_bytes({:json_chunks, _, array}), do: byte_size(array)
  defp payload_bytes(binary) when is_binary(binary), do: byte_size(binary)
end
