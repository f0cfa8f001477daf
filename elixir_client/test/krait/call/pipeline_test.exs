Code.require_file("duplex_case.exs", __DIR__)

defmodule Krait.Call.PipelineTest do
  # `Krait.stream/3` as the `input:` of another call is a pipeline: each stage on its own worker,
  # chunk data as the next stage's items, backpressure end to end; halting or killing the consumer
  # cancels every stage. Against real showcase workers, over the link and gRPC.
  import Krait.DuplexCase

  defduplex __MODULE__, size: 3 do
    alias Krait.Error

    test "three stages: a source, two full-duplex stages, each on its own worker", %{pool: pool} do
      source = Krait.stream("stream_numbers", %{count: 50}, pool: pool)
      middle = Krait.stream("echo_input", %{}, pool: pool, input: source)
      last = Krait.stream("aecho_input", %{}, pool: pool, input: middle)

      numbers = last |> Enum.map(& &1.data) |> Enum.reject(&is_nil/1) |> Enum.map(& &1["number"])
      assert numbers == Enum.to_list(0..49)

      # a unary stage at the end, over a large input: sums what two stages passed on
      items = Stream.map(1..5_000, &%{i: &1})

      assert {:ok, 12_502_500} =
               Krait.execute("sum_input", %{},
                 pool: pool,
                 input:
                   Krait.stream("echo_input", %{},
                     pool: pool,
                     input: Krait.stream("echo_input", %{}, pool: pool, input: items)
                   )
               )

      assert_healthy(pool)
    end

    test "chunks become items: progress events and payload-less finals are skipped, text is a string",
         %{pool: pool} do
      direct =
        Krait.stream("progress_demo", %{steps: 3}, pool: pool)
        |> Enum.reject(&(&1.metadata["krait.event"] == "progress" or &1.data == nil))
        |> Enum.map(& &1.data)

      assert direct != []

      piped =
        Krait.stream("echo_input", %{},
          pool: pool,
          input: Krait.stream("progress_demo", %{steps: 3}, pool: pool)
        )
        |> Enum.map(& &1.data)
        |> Enum.reject(&is_nil/1)

      assert piped == direct

      lines =
        Krait.stream("stream_text", %{lines: 3}, pool: pool)
        |> Enum.map(& &1.data)
        |> Enum.reject(&is_nil/1)

      assert lines == ["line 1", "line 2", "line 3"]

      assert Krait.stream("echo_input", %{},
               pool: pool,
               input: Krait.stream("stream_text", %{lines: 3}, pool: pool)
             )
             |> Enum.map(& &1.data)
             |> Enum.reject(&is_nil/1) == lines
    end

    test "three stages are busy at once, one per worker", %{pool: pool} do
      test = self()
      gate = :counters.new(1, [])

      # an endless source, so all three stages stay open until the consumer halts
      source = Stream.repeatedly(fn -> :counters.add(gate, 1, 1) && %{i: 1} end)
      a = Krait.stream("echo_input", %{}, pool: pool, input: source)
      b = Krait.stream("echo_input", %{}, pool: pool, input: a)
      c = Krait.stream("hold_input", %{}, pool: pool, input: b)

      consumer =
        spawn(fn ->
          Enum.each(c, fn chunk -> send(test, {:count, chunk.data}) end)
        end)

      assert_receive {:count, 10}, 15_000
      assert %{busy: 3, idle: 0} = Krait.Pool.stats(pool)
      Process.exit(consumer, :kill)
      assert_healthy(pool)
    end

    test "halting the consumer cancels every stage (their finally runs)", %{pool: pool} do
      tags = for _ <- 1..3, do: tag()
      [t1, t2, t3] = tags

      endless = Stream.repeatedly(fn -> %{tick: 1} end)
      s1 = Krait.stream("hold_input", %{tag: t1}, pool: pool, input: endless)
      s2 = Krait.stream("hold_input", %{tag: t2}, pool: pool, input: s1)
      s3 = Krait.stream("hold_input", %{tag: t3}, pool: pool, input: s2)

      assert [1, 2, 3] = s3 |> Enum.take(3) |> Enum.map(& &1.data)

      for tag <- tags do
        eventually(fn -> Map.has_key?(events(pool, tag), "finally") end, 10_000)
      end

      assert_healthy(pool)
    end

    test "a failing upstream stage fails the pipeline with its error", %{pool: pool} do
      upstream = Krait.stream("failing_stream", %{fail_at: 3}, pool: pool)

      assert {:error, %Error{category: :input, message: message}} =
               Krait.execute("sum_input", %{},
                 pool: pool,
                 input: Stream.map(upstream, &%{i: &1.data["step"]})
               )

      # the upstream stage's own error, raised in the feeder, names the Python exception
      assert message =~ "ValueError"
      assert_healthy(pool)
    end
  end
end
