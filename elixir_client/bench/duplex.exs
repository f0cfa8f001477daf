defmodule KraitBench.Duplex do
  @moduledoc """
  Streams both ways (row 15 of scripts/bench): input into tools, handler calls back to the caller, and
  pipelines of tools, each beside the machine's limit measured warm and interleaved in the same run
  (`KraitBench.Limits`: a naive JSON-lines input and raw bytes into a Python reader over a Port, the bare
  Port ping-pong).
  """

  alias KraitBench.{Limits, Proc, Stats}

  @doc "Every figure of row 15 on `pool` (a pool of at least 3 workers over the link), as one report map."
  def run(pool, cfg, python, root) do
    small_input(pool, cfg, python, root)
    |> Map.merge(large_input(pool, cfg, python, root))
    |> Map.merge(round_trips(pool, cfg, python, root))
    |> Map.merge(pipeline(pool, cfg))
  end

  # {"i": n} items summed by a sync tool, against JSON lines summed by a bare Python loop.
  defp small_input(pool, %{"items" => items, "runs" => runs}, python, root) do
    krait = fn ->
      input = Stream.map(0..(items - 1), &%{"i" => &1})

      {us, {:ok, sum}} =
        Stats.timed(fn -> Krait.execute("sum_input", %{}, pool: pool, input: input) end)

      if sum != div(items * (items - 1), 2), do: raise("sum_input summed to #{sum}")
      items / (us / 1.0e6)
    end

    port = Limits.json_lines_in_open(python, root)
    Limits.json_lines_in(port, items)
    krait.()

    rounds =
      for _ <- 1..max(runs, 3),
          do: %{
            in_port_jsonl_items_per_s: Limits.json_lines_in(port, items),
            in_ex_items_per_s: krait.()
          }

    Limits.close(port)
    medians(rounds) |> Map.merge(spread(rounds, :in_port_jsonl_items_per_s))
  end

  # 4 MiB float32 frames into a tool, against raw 4 MiB blocks into a bare Python reader.
  defp large_input(pool, %{"blobs" => blobs, "blob_mb" => mb, "runs" => runs}, python, root) do
    floats = div(mb * 1_048_576, 4)
    frame = Krait.Tensor.new(:binary.copy(<<1.0::float-32-little>>, floats), :float32, {floats})
    block = :binary.copy("x", mb * 1_048_576)

    krait = fn ->
      input = Stream.repeatedly(fn -> frame end) |> Stream.take(blobs)

      {us, count} =
        Stats.timed(fn ->
          Krait.stream("array_input", %{}, pool: pool, input: input)
          |> Enum.count(&(not &1.is_final))
        end)

      if count != blobs, do: raise("array_input answered #{count} of #{blobs} frames")
      blobs * byte_size(block) / (us / 1.0e6)
    end

    port = Limits.bytes_in_open(python, root)
    Limits.bytes_in(port, blobs, block)
    krait.()

    rounds =
      for _ <- 1..max(runs, 3),
          do: %{
            in_port_bytes_per_s: Limits.bytes_in(port, blobs, block),
            in_ex_bytes_per_s: krait.()
          }

    Limits.close(port)
    medians(rounds) |> Map.merge(spread(rounds, :in_port_bytes_per_s))
  end

  # Echo (one item in, its chunk out) and ctx.call round trips, against the warm bare ping-pong.
  defp round_trips(pool, %{"latency_calls" => calls}, python, root) do
    ping = Limits.ping_open(python, root)
    Limits.ping_samples(ping, 2_000)
    echo_us(pool, calls)

    rounds =
      for _ <- 1..3 do
        pong = Stats.percentile(Limits.ping_samples(ping, calls), 50)
        echo = echo_us(pool, calls)
        {:ok, handler} = handler_us(pool, calls)

        %{
          echo_ping_p50_us: pong,
          echo_p50_us: Stats.percentile(echo, 50),
          handler_p50_us: handler["p50_us"]
        }
      end

    Limits.close(ping)
    medians(rounds)
  end

  # µs from the consumer asking for the next item to that item's echo reaching it: the item is pulled by
  # the call's feeder only when asked (the input blocks), so each sample is one whole round trip.
  defp echo_us(pool, calls) do
    parent = self()

    input =
      Stream.resource(
        fn ->
          send(parent, {:bench_feeder, self()})
          :first
        end,
        fn
          :first ->
            {[%{"t" => 0}], :more}

          :more ->
            receive do
              :next -> {[%{"t" => 0}], :more}
              :stop -> {:halt, :more}
            end
        end,
        fn _ -> :ok end
      )

    Process.put(:bench_samples, [])
    Process.delete(:bench_sent)

    on_chunk = fn
      %Krait.Chunk{is_final: true} ->
        :ok

      _echo ->
        feeder =
          receive do
            {:bench_feeder, pid} -> pid
          after
            0 -> Process.get(:bench_feeder)
          end

        Process.put(:bench_feeder, feeder)
        now = System.monotonic_time(:microsecond)
        sent = Process.get(:bench_sent)
        samples = if sent, do: [now - sent | Process.get(:bench_samples)], else: []
        Process.put(:bench_samples, samples)
        Process.put(:bench_sent, System.monotonic_time(:microsecond))
        send(feeder, if(length(samples) < calls, do: :next, else: :stop))
    end

    :ok = Krait.execute_stream("echo_input", %{}, on_chunk, pool: pool, input: input)
    Process.get(:bench_samples)
  end

  defp handler_us(pool, calls) do
    Krait.execute("handler_latency", %{name: "noop", count: calls},
      pool: pool,
      handlers: %{"noop" => fn _args -> {:ok, 1} end}
    )
  end

  # Three stages (each on its own worker) against one; the workers' peak RSS after a short and a 4x longer run.
  defp pipeline(pool, %{"items" => items, "runs" => runs}) do
    one = fn n -> Krait.stream("stream_small", %{count: n}, pool: pool) end
    stage = fn input -> Krait.stream("echo_input", %{}, pool: pool, input: input) end

    rate = fn make ->
      {us, count} = Stats.timed(fn -> make.() |> Enum.count(&(not &1.is_final)) end)
      if count != items, do: raise("the pipeline delivered #{count} of #{items} items")
      items / (us / 1.0e6)
    end

    rate.(fn -> stage.(stage.(one.(items))) end)

    rounds =
      for _ <- 1..max(runs, 3) do
        %{
          pipeline_one_stage_items_per_s: rate.(fn -> one.(items) end),
          pipeline_items_per_s: rate.(fn -> stage.(stage.(one.(items))) end)
        }
      end

    hwm = fn ->
      Krait.Pool.stats(pool).workers
      |> Enum.map(&(Proc.status_mb(&1.os_pid, "VmHWM") || 0.0))
      |> Enum.sum()
    end

    short = hwm.()
    stage.(stage.(one.(items * 4))) |> Stream.run()

    medians(rounds)
    |> Map.merge(%{pipeline_rss_hwm_short_mb: short, pipeline_rss_hwm_long_mb: hwm.()})
  end

  defp medians(rounds), do: Stats.medians(rounds)
  defp spread(rounds, key), do: Stats.spread(rounds, key)
end
