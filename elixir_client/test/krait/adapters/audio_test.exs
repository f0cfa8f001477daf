defmodule Krait.Adapters.AudioTest do
  @moduledoc """
  adapters.audio through the Elixir pool: live analysis of a generated test signal streams into a
  callback, and stopping early closes the source on the worker. (Real recorded audio is covered by the
  Python suite's PulseAudio tests.)
  """
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_module_pool!(adapter: "adapters.audio:AudioAdapter", size: 1)}
  end

  @tone %{kind: "sine", frequency_hz: 440.0, level_dbfs: -12.0}

  test "pitch of a 440 Hz tone, with note name", %{pool: pool} do
    chunks =
      Krait.stream("stream_pitch", %{signal: @tone, max_chunks: 5, realtime: false}, pool: pool)
      |> Enum.reject(& &1.is_final)

    assert length(chunks) == 5

    for chunk <- chunks do
      assert chunk["voiced"] == true
      assert_in_delta chunk["frequency_hz"], 440.0, 2.0
      assert chunk["note"] == "A4"
    end
  end

  test "levels of a -12 dBFS sine: peak -12, RMS -15 dBFS", %{pool: pool} do
    test = self()

    assert :ok =
             Krait.execute_stream(
               "stream_levels",
               %{signal: @tone, duration_s: 1.5, max_rate_hz: 10, realtime: false},
               fn chunk -> send(test, {:chunk, chunk}) end,
               pool: pool
             )

    chunks = received_chunks()
    assert %Krait.Chunk{is_final: true} = List.last(chunks)
    last = chunks |> Enum.reject(& &1.is_final) |> List.last()
    assert_in_delta hd(last["peak_dbfs"]), -12.0, 0.1
    # a sine's RMS is 3.01 dB below its peak
    assert_in_delta hd(last["rms_dbfs"]), -15.01, 0.2
  end

  test "the 1/3-octave band holding 440 Hz is the loudest", %{pool: pool} do
    [chunk | _] =
      Krait.stream("stream_octave", %{signal: @tone, max_chunks: 3, realtime: false}, pool: pool)
      |> Enum.drop(2)

    levels = chunk["band_levels_db"]
    loudest = Enum.find_index(levels, &(&1 == Enum.max(levels)))
    assert Enum.at(chunk["band_labels"], loudest) == "400"
  end

  test "stopping a live stream early closes its source on the worker", %{pool: pool} do
    assert [_, _] =
             Krait.stream("stream_levels", %{signal: @tone, max_rate_hz: 20}, pool: pool)
             |> Enum.take(2)

    closed =
      eventually(fn ->
        {:ok, %{"open" => open, "closed" => closed}} =
          Krait.execute("active_streams", %{}, pool: pool)

        open == [] and Enum.find(closed, &(&1["outcome"] == "cancelled"))
      end)

    assert closed["released"] == true
  end
end
