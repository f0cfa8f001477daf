defmodule Krait.Test.Contract do
  @moduledoc """
  The public API's contract against a pool of showcase workers, shared by the local pool's suite
  (`KraitTest`) and the remote TLS pool's (`Krait.Pool.RemoteContractTest`): `use` it in an
  `ExUnit.Case` whose `setup_all` gives `pool:` and `worker_ids:` (a regex the workers' ids match).
  """

  defmacro __using__(_opts) do
    quote do
      import Krait.TestHelpers
      alias Krait.{Chunk, Error, Tensor}

      defp collect(pool, tool, args, opts \\ []) do
        test = self()

        result =
          Krait.execute_stream(
            tool,
            args,
            &send(test, {:chunk, self(), &1}),
            [pool: pool] ++ opts
          )

        {result, drain()}
      end

      defp collect!(pool, tool, args) do
        {:ok, chunks} = collect(pool, tool, args)
        chunks
      end

      defp drain do
        receive do
          {:chunk, _, chunk} -> [chunk | drain()]
        after
          0 -> []
        end
      end

      defp events(pool, tag) do
        {:ok, events} = Krait.execute("stream_events", %{tag: tag}, pool: pool)
        events
      end

      defp idle?(pool), do: Krait.Pool.stats(pool).busy == 0

      describe "execute/3" do
        test "returns the tool's value", %{pool: pool} do
          assert {:ok, 5.0} = Krait.execute("add", %{a: 2, b: 3}, pool: pool)

          assert {:ok, "Hi, Ann?"} =
                   Krait.execute("greet", [name: "Ann", greeting: "Hi", punctuation: ["?"]],
                     pool: pool
                   )

          value = %{"nested" => [1, 2.5, nil, true, %{"s" => "é"}]}
          assert {:ok, ^value} = Krait.execute("echo", %{value: value}, pool: pool)
        end

        test "keeps big integers exact", %{pool: pool} do
          assert {:ok, 1_180_591_620_717_411_303_424} =
                   Krait.execute("big_int", %{exponent: 70}, pool: pool)
        end

        test "tensors and bytes travel as binary arguments and results", %{pool: pool} do
          values = Tensor.from_list([1.0, 2.0, 3.5], :float32)

          assert {:ok, %{"dtype" => "float32", "shape" => [3], "sum" => 6.5}} =
                   Krait.execute("array_stats", %{values: values}, pool: pool)

          assert {:ok, %Tensor{dtype: :float32, shape: {3}} = scaled} =
                   Krait.execute("scale_array", %{values: values, factor: 2}, pool: pool)

          assert Tensor.to_list(scaled) == [2.0, 4.0, 7.0]

          assert {:ok, "cba"} =
                   Krait.execute("reverse_bytes", %{blob: {:binary, "abc"}}, pool: pool)
        end

        test "a Python exception is a :python error with type and traceback", %{
          pool: pool,
          worker_ids: worker_ids
        } do
          assert {:error,
                  %Error{category: :python, message: "epochs must be > 0", details: details}} =
                   Krait.execute("fail", %{}, pool: pool)

          assert details.type == "ValueError"
          assert details.traceback =~ "raise ValueError"
          assert details.tool_name == "fail"
          assert details.worker_id =~ worker_ids
        end

        test "unknown tools, bad arguments and wrong RPCs", %{pool: pool} do
          assert {:error, %Error{category: :not_found}} =
                   Krait.execute("no_such_tool", %{}, pool: pool)

          assert {:error, %Error{category: :invalid_argument}} =
                   Krait.execute("add", %{a: 1}, pool: pool)

          assert {:error, %Error{category: :failed_precondition, message: message}} =
                   Krait.execute("stream_numbers", %{}, pool: pool)

          assert message ==
                   "stream_numbers is a streaming tool: call it with " <>
                     "Krait.execute_stream/4 or Krait.stream/3"

          assert {{:error, %Error{category: :failed_precondition, message: message}}, []} =
                   collect(pool, "add", %{a: 1, b: 2})

          assert message == "add is not a streaming tool: call it with Krait.execute/3"

          error =
            assert_raise Error, fn ->
              pool |> then(&Krait.stream("add", %{}, pool: &1)) |> Enum.to_list()
            end

          assert error.message =~ "call it with Krait.execute/3"
        end

        test "invalid options and arguments are rejected before any worker is used", %{pool: pool} do
          assert {:error, %Error{category: :invalid_argument}} =
                   Krait.execute("add", %{}, pool: pool, affinity: :sticky)

          assert {:error, %Error{category: :invalid_argument}} =
                   Krait.execute("add", %{}, pool: pool, timeout: -1)

          assert {:error, %Error{category: :invalid_argument}} =
                   Krait.execute("add", [1, 2], pool: pool)

          assert {:error, %Error{category: :invalid_argument}} =
                   Krait.execute("add", %{a: {1, 2}}, pool: pool)
        end

        test "unknown options name the nearest known one; wrong types are errors, never raises",
             %{
               pool: pool
             } do
          assert {:error, %Error{category: :invalid_argument, message: message}} =
                   Krait.execute("slow_tool", %{seconds: 2}, pool: pool, timout: 100)

          assert message == "unknown option :timout (did you mean :timeout?)"

          for {opts, expected} <- [
                {[pool: "string"], "option :pool must be a pool name"},
                {[metadata: %{"a" => %{"nested" => 1}}], "option :metadata must be a flat map"},
                {[metadata: [a: 1]], "option :metadata must be a flat map"},
                {[session_id: 42], "option :session_id must be a string or an atom"},
                {[session_id: String.duplicate("s", 257)], "option :session_id is 257 bytes"},
                {[timeout: "5s"], "option :timeout must be a positive integer (ms) or :infinity"},
                {:not_a_list, "options must be a keyword list"}
              ] do
            opts = if is_list(opts), do: Keyword.put_new(opts, :pool, pool), else: opts

            assert {:error, %Error{category: :invalid_argument, message: message}} =
                     Krait.execute("add", %{a: 1, b: 2}, opts)

            assert message =~ expected

            assert {:error, %Error{category: :invalid_argument}} =
                     Krait.execute_stream("stream_numbers", %{}, fn _ -> :ok end, opts)

            assert_raise Error, fn -> Krait.stream("stream_numbers", %{}, opts) end
          end

          bogus = %Tensor{dtype: :bogus, shape: {1}, data: <<0>>}

          assert {:error, %Error{category: :invalid_argument, message: message}} =
                   Krait.execute("array_stats", %{values: bogus}, pool: pool)

          assert message =~ ~s(argument "values": unknown tensor dtype :bogus)

          short = %Tensor{dtype: :float32, shape: {4}, data: <<0, 0, 0, 0>>}

          assert {:error, %Error{category: :invalid_argument, message: message}} =
                   Krait.execute("array_stats", %{values: short}, pool: pool)

          assert message =~ "tensor data is 4 bytes"
          # nothing was leaked: both workers are idle
          assert eventually(fn -> idle?(pool) end)
        end

        test "a missing pool is a :pool error" do
          assert {:error, %Error{category: :pool, details: %{reason: :pool_not_running}}} =
                   Krait.execute("add", %{a: 1, b: 2}, pool: NoSuchKraitPool)
        end

        test "the deadline stops the tool in Python too", %{pool: pool} do
          tag = tag()
          started = System.monotonic_time(:millisecond)

          assert {:error, %Error{category: :timeout}} =
                   Krait.execute("slow_tool", %{seconds: 10, tag: tag}, pool: pool, timeout: 800)

          # not before the deadline, and long before the 10 s tool would end by itself
          assert (System.monotonic_time(:millisecond) - started) in 800..8_000
          assert eventually(fn -> events(pool, tag)["cancel_seen"] end)
          assert eventually(fn -> idle?(pool) end)
        end
      end

      describe "execute_stream/4" do
        test "calls back once per chunk, in order, in the caller's process", %{pool: pool} do
          test = self()
          callback = fn chunk -> send(test, {:chunk, self(), chunk}) end
          assert :ok = Krait.execute_stream("stream_progress", %{steps: 5}, callback, pool: pool)
          chunks = for _ <- 1..6, do: assert_receive({:chunk, pid, chunk}) && {pid, chunk}
          refute_received {:chunk, _, _}

          assert Enum.all?(chunks, fn {pid, _} -> pid == self() end)
          chunks = Enum.map(chunks, &elem(&1, 1))
          assert Enum.map(chunks, & &1["progress"]) == [20.0, 40.0, 60.0, 80.0, 100.0, nil]
          assert Enum.map(chunks, & &1.seq) == Enum.to_list(0..5)
          assert [%Chunk{is_final: false, content_type: "application/json"} | _] = chunks
          final = List.last(chunks)
          assert final.is_final and Chunk.synthetic_final?(final) and final.data == nil

          assert %{"execution_time_ms" => _, "tool_type" => "remote", "worker_id" => _} =
                   final.metadata
        end

        test "an explicit final chunk keeps its data and metadata", %{pool: pool} do
          chunks = collect!(pool, "stream_items", %{count: 3})
          assert Enum.map(chunks, & &1[:index]) == [1, 2, 3]
          assert [false, false, true] == Enum.map(chunks, & &1.is_final)
          last = List.last(chunks)
          assert last.metadata["item"] == "3" and last.metadata["worker_id"] != nil
          refute Chunk.synthetic_final?(last)
        end

        test "NumPy chunks arrive as tensors over the received binary", %{pool: pool} do
          chunks = collect!(pool, "stream_arrays", %{batches: 2, batch_rows: 64, cols: 16})
          [a, b | _] = chunks
          assert %Tensor{dtype: :float32, shape: {64, 16}, byte_order: :little} = a.data
          assert a.content_type == "application/x-npy"
          assert byte_size(a.data.data) == 4096
          assert [0.0 | _] = Tensor.to_list(a.data)
          assert [1.0 | _] = Tensor.to_list(b.data)
          # a sub-binary of the message, not a copy
          assert :binary.referenced_byte_size(a.data.data) > 4096
        end

        test "text chunks are strings", %{pool: pool} do
          chunks = collect!(pool, "stream_text", %{lines: 2})
          assert ["line 1", "line 2", nil] == Enum.map(chunks, & &1.data)
        end

        test "a tool that raises mid-stream: chunks so far, then a :python error", %{pool: pool} do
          assert {{:error, %Error{category: :python, details: %{type: "ValueError"}}}, chunks} =
                   collect(pool, "failing_stream", %{fail_at: 2})

          assert Enum.map(chunks, & &1["step"]) == [1, 2]
        end

        test "a raising callback cancels the call, frees the worker and returns the error", %{
          pool: pool
        } do
          tag = tag()

          assert {:error,
                  %Error{
                    category: :callback,
                    details: %{kind: :error, reason: %RuntimeError{message: "boom"}}
                  }} =
                   Krait.execute_stream(
                     "endless_stream",
                     %{interval_ms: 5, tag: tag},
                     fn chunk ->
                       if chunk["tick"] == 3, do: raise("boom")
                     end,
                     pool: pool
                   )

          assert eventually(fn -> idle?(pool) end, 1_000)
          assert eventually(fn -> events(pool, tag)["finally"] end)

          assert {:error, %Error{category: :callback, details: %{kind: :throw}}} =
                   Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> throw(:stop) end,
                     pool: pool
                   )

          assert {:error, %Error{category: :callback, details: %{kind: :exit}}} =
                   Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> exit(:stop) end,
                     pool: pool
                   )

          assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
        end

        test "a stream past its deadline is a :timeout and the tool stops", %{pool: pool} do
          tag = tag()

          assert {{:error, %Error{category: :timeout}}, chunks} =
                   collect(pool, "endless_stream", %{interval_ms: 20, tag: tag}, timeout: 1_000)

          assert chunks != []
          assert eventually(fn -> events(pool, tag)["finally"] end)
          assert eventually(fn -> idle?(pool) end)
        end

        test "a callback returning :halt stops the stream: cancelled on the worker, worker freed",
             %{
               pool: pool
             } do
          for halt <- [:halt, {:halt, :enough}] do
            tag = tag()
            test = self()

            assert :ok =
                     Krait.execute_stream(
                       "endless_stream",
                       %{interval_ms: 5, tag: tag},
                       fn chunk ->
                         send(test, {:tick, chunk["tick"]})
                         if chunk["tick"] == 2, do: halt, else: :ok
                       end,
                       pool: pool
                     )

            assert_received {:tick, 2}
            refute_received {:tick, 3}
            assert eventually(fn -> events(pool, tag)["finally"] end)
            assert eventually(fn -> idle?(pool) end)
          end

          # any other return value is ignored
          assert {:ok, chunks} = collect(pool, "stream_numbers", %{count: 3})
          assert length(chunks) == 4
        end

        test "a non-function callback is rejected", %{pool: pool} do
          assert {:error, %Error{category: :invalid_argument}} =
                   Krait.execute_stream("stream_numbers", %{}, :nope, pool: pool)
        end
      end

      describe "stream/3" do
        test "is lazy and enumerates every chunk", %{pool: pool} do
          stream = Krait.stream("stream_numbers", %{count: 4}, pool: pool)
          assert idle?(pool)
          numbers = stream |> Stream.map(& &1["number"]) |> Enum.to_list()
          assert numbers == [0, 1, 2, 3, nil]
        end

        test "halting early cancels the call on the worker", %{pool: pool} do
          tag = tag()

          chunks =
            Krait.stream("endless_stream", %{interval_ms: 5, tag: tag}, pool: pool)
            |> Enum.take(3)

          assert Enum.map(chunks, & &1["tick"]) == [0, 1, 2]
          assert idle?(pool)
          assert eventually(fn -> events(pool, tag)["finally"] end)
        end

        test "failures raise Krait.Error", %{pool: pool} do
          assert_raise Error, ~r/ValueError/, fn ->
            Krait.stream("failing_stream", %{fail_at: 1}, pool: pool) |> Enum.to_list()
          end

          assert_raise Error, ~r/timeout/, fn ->
            Krait.stream("endless_stream", %{interval_ms: 10}, pool: pool, timeout: 200)
            |> Enum.to_list()
          end

          assert_raise Error, fn ->
            Krait.stream("stream_numbers", %{}, pool: pool, affinity: :bad)
          end

          assert eventually(fn -> idle?(pool) end)
        end
      end

      test "a long stream of small JSON chunks: every one, once, in order", %{pool: pool} do
        # many batches and flow-control windows' worth (the chunks/s: scripts/bench)
        n = 20_000
        {:ok, chunks} = collect(pool, "stream_small", %{count: n})
        assert length(chunks) == n + 1
        {data, [final]} = Enum.split(chunks, n)
        assert Enum.map(data, & &1["i"]) == Enum.to_list(0..(n - 1))
        assert Enum.map(chunks, & &1.seq) == Enum.to_list(0..n)
        refute Enum.any?(data, & &1.is_final)
        assert final.is_final and final.data == nil
      end
    end
  end
end
