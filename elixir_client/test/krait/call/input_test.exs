Code.require_file("duplex_case.exs", __DIR__)

# `input:` on every entry point, against real showcase workers, over the link and gRPC: items in
# (JSON, arrays, bytes, validated models), full duplex, credit (an endless input is pulled only as
# the tool reads), bad items, a failing Enumerable, a killed caller, the deadline, sessions.
defmodule Krait.Call.InputTest do
  import Krait.DuplexCase

  defduplex __MODULE__, size: 2 do
    alias Krait.Error

    test "items are summed, from a list, a range Stream, through each entry point", %{pool: pool} do
      items = Enum.map(0..99, &%{i: &1})
      assert {:ok, 4950} = Krait.execute("sum_input", %{}, pool: pool, input: items)

      assert {:ok, 4950} =
               Krait.execute("sum_input", %{}, pool: pool, input: Stream.map(items, & &1))

      assert {:ok, 0} = Krait.execute("sum_input", %{}, pool: pool, input: [])
      assert {:ok, 3} = Krait.execute("acount_input", %{}, pool: pool, input: [1, "two", nil])

      test = self()

      assert :ok =
               Krait.execute_stream("echo_input", %{}, &send(test, {:chunk, &1}),
                 pool: pool,
                 input: [1, 2]
               )

      assert [1, 2] = for(c <- received_chunks(), c.data != nil, do: c.data)

      # a big input crosses many credit grants (window: 1024 items)
      n = 20_000

      assert {:ok, total} =
               Krait.execute("sum_input", %{}, pool: pool, input: Stream.map(1..n, &%{i: &1}))

      assert total == div(n * (n + 1), 2)
    end

    test "list_tools shows a tool's input stream: its parameter and its item's schema", %{
      pool: pool
    } do
      assert {:ok, tools} = Krait.list_tools(pool: pool)
      by_name = Map.new(tools, &{&1.name, &1})
      assert %{input_param: "items", input: %{"type" => "object"}} = by_name["sum_input"]
      assert %{input_param: "frames", input: %{"x-krait-binary" => true}} = by_name["array_input"]
      assert %{input_param: nil, input: nil} = by_name["add"]
      refute Map.has_key?(by_name["sum_input"].parameters["properties"], "items")
    end

    test "arrays, bytes and validated models travel as items", %{pool: pool} do
      frames = for k <- 1..3, do: Krait.Tensor.from_list(List.duplicate(k * 1.0, 4), :float32)

      assert [%{"shape" => [4], "sum" => 4.0}, %{"sum" => 8.0}, %{"sum" => 12.0}] =
               Krait.stream("array_input", %{}, pool: pool, input: frames)
               |> Enum.map(& &1.data)
               |> Enum.reject(&is_nil/1)

      blobs = [{:binary, <<1, 2, 3>>}, {:binary, :binary.copy(<<0>>, 1000)}]
      assert {:ok, 1003} = Krait.execute("bytes_input", %{}, pool: pool, input: blobs)

      assert {:ok, 14.0} =
               Krait.execute("point_input", %{}, pool: pool, input: [%{x: 1, y: 2}, %{x: 3, y: 4}])
    end

    test "full duplex: each item is echoed before the next one exists (sync and async tools)",
         %{pool: pool} do
      for tool <- ["echo_input", "aecho_input"] do
        gate = start_gate()
        # item n is only produced once the echo of item n-1 came back
        input = Stream.map(0..4, fn n -> gate_wait(gate, n) && %{n: n} end)

        echoed =
          Krait.stream(tool, %{}, pool: pool, input: input, timeout: 20_000)
          |> Enum.reduce_while([], fn
            %{data: nil}, acc ->
              {:cont, acc}

            %{data: %{"n" => n}}, acc ->
              send(gate, {:allow, n + 1})
              {:cont, [n | acc]}
          end)

        assert Enum.reverse(echoed) == [0, 1, 2, 3, 4], tool
        send(gate, :stop)
      end
    end

    test "an endless input: a tool that returns early leaves the rest unpulled (within one window)",
         %{pool: pool} do
      pulled = :counters.new(1, [])

      endless =
        Stream.repeatedly(fn -> :counters.add(pulled, 1, 1) && :counters.get(pulled, 1) end)

      tag = tag()

      assert {:ok, [1, 2, 3]} =
               Krait.execute("take_input", %{n: 3, tag: tag}, pool: pool, input: endless)

      # the worker's window is 1024 items: never more is pulled ahead of the tool
      assert :counters.get(pulled, 1) <= 3 + 1024
      assert %{"finally" => _} = events(pool, tag)
      assert_healthy(pool)
    end

    test "an Enumerable that halts on an element keeps it; one left unfinished is halted (its cleanup runs)",
         %{pool: pool} do
      # Stream.take/2 hands its last element over together with its halt
      assert {:ok, 8} =
               Krait.execute("acount_input", %{}, pool: pool, input: Stream.take(1..100, 8))

      assert {:ok, 8} =
               Krait.execute("acount_input", %{},
                 pool: pool,
                 input: Stream.repeatedly(fn -> 1 end) |> Stream.take(8)
               )

      # the tool returns after 2 items: the rest of the resource is never read, and its after
      # function runs (a file closed, a subscription ended)
      test = self()

      resource =
        Stream.resource(
          fn -> 0 end,
          fn n -> {[n], n + 1} end,
          fn _ -> send(test, :resource_closed) end
        )

      assert {:ok, [0, 1]} = Krait.execute("take_input", %{n: 2}, pool: pool, input: resource)
      assert_receive :resource_closed, 2_000
    end

    test "an invalid item ends the call with :invalid_argument naming its index", %{pool: pool} do
      items = [%{x: 1, y: 2}, %{x: 1, y: 2}, %{x: "not a number", y: 1}, %{x: 1, y: 1}]

      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.execute("point_input", %{}, pool: pool, input: items)

      assert message =~ "point_input: input item 2"

      # an item Elixir cannot encode is refused before it is sent, naming its index too
      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.execute("sum_input", %{}, pool: pool, input: [%{i: 1}, {:not, :json}])

      assert message =~ "input item 1"
      assert_healthy(pool)
    end

    test "an Enumerable that raises, throws or exits: the call's error, and the tool's iterator raised",
         %{pool: pool} do
      for {how, fail} <- [
            raise: fn -> raise ArgumentError, "bad frame" end,
            throw: fn -> throw(:no_more) end,
            exit: fn -> exit(:gone) end
          ] do
        tag = tag()
        input = Stream.map(0..10, fn i -> if i == 3, do: fail.(), else: i end)

        assert {:error, %Error{category: :input, message: message, details: details}} =
                 Krait.execute("take_input", %{n: 10, tag: tag}, pool: pool, input: input)

        assert details.kind == if(how == :raise, do: :error, else: how)
        assert details.index == 3

        case how do
          :raise -> assert message =~ "(ArgumentError) bad frame"
          :throw -> assert message =~ ":no_more"
          :exit -> assert message =~ ":gone"
        end

        assert %{"input_error" => _, "finally" => _} = events(pool, tag)
      end

      # Krait.stream/3 raises it
      assert_raise Error, ~r/input failed/, fn ->
        Krait.stream("echo_input", %{},
          pool: pool,
          input:
            Stream.map([1, 2], fn
              2 -> raise "x"
              i -> i
            end)
        )
        |> Enum.to_list()
      end

      assert_healthy(pool)
    end

    test "a caller that traps exits gets its results, and no stray exit message", %{pool: pool} do
      task =
        Task.async(fn ->
          Process.flag(:trap_exit, true)
          ok = Krait.execute("sum_input", %{}, pool: pool, input: [%{i: 1}, %{i: 2}])

          failed =
            Krait.execute("sum_input", %{},
              pool: pool,
              input:
                Stream.map([1, 2], fn
                  2 -> raise "late"
                  i -> %{i: i}
                end)
            )

          Process.sleep(100)
          {ok, failed, Process.info(self(), :messages)}
        end)

      assert {{:ok, 3}, {:error, %Error{category: :input}}, {:messages, []}} =
               Task.await(task, 20_000)
    end

    test "a caller killed mid-input: the tool's finally runs and the worker is freed",
         %{pool: pool} do
      tag = tag()
      test = self()

      caller =
        spawn(fn ->
          input = Stream.repeatedly(fn -> Process.sleep(20) && %{tick: 1} end)

          Krait.execute_stream("hold_input", %{tag: tag}, fn c -> send(test, {:held, c.data}) end,
            pool: pool,
            input: input,
            timeout: 60_000
          )
        end)

      assert_receive {:held, 2}, 10_000
      Process.exit(caller, :kill)

      eventually(fn -> Map.has_key?(events(pool, tag), "finally") end, 10_000)
      assert_healthy(pool)
    end

    test "the deadline covers the whole exchange (a slow input included)", %{pool: pool} do
      slow = Stream.repeatedly(fn -> Process.sleep(50) && %{i: 1} end)
      started = System.monotonic_time(:millisecond)

      assert {:error, %Error{category: :timeout}} =
               Krait.execute("sum_input", %{}, pool: pool, input: slow, timeout: 600)

      elapsed = System.monotonic_time(:millisecond) - started
      assert elapsed >= 550 and elapsed < 5_000

      assert_raise Error, ~r/timeout|deadline/i, fn ->
        Krait.stream("echo_input", %{}, pool: pool, input: slow, timeout: 600) |> Stream.run()
      end

      assert_healthy(pool)
    end

    test "sessions and affinity are unchanged with input", %{pool: pool} do
      session = "s-#{System.unique_integer([:positive])}"

      assert {:ok, %{"count" => 1, "worker_id" => worker}} =
               Krait.execute("session_counter", %{}, pool: pool, session_id: session)

      # a call with input on the session runs on the session's worker (strict: nowhere else)
      assert {:ok, 6} =
               Krait.execute("sum_input", %{},
                 pool: pool,
                 session_id: session,
                 affinity: :strict_queue,
                 input: [%{i: 1}, %{i: 2}, %{i: 3}]
               )

      assert {:ok, %{"count" => 2, "worker_id" => ^worker}} =
               Krait.execute("session_counter", %{}, pool: pool, session_id: session)

      assert :ok = Krait.end_session(session, pool: pool)
    end

    test "input to a tool that reads none, and a tool that reads one called without it",
         %{pool: pool, transport: transport} do
      # the same refusal on both transports: the call says it brings input (krait-input)
      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.execute("add", %{a: 1, b: 2}, pool: pool, input: [1])

      assert message =~ "add reads no input stream", "#{transport}: #{message}"

      # and which kind of tool it expects (krait-rpc on ExecuteToolDuplex): the wrong one is refused
      assert {:error, %Error{category: :failed_precondition, message: message}} =
               Krait.execute("echo_input", %{}, pool: pool, input: [1])

      assert message =~ "streaming tool", "#{transport}: #{message}"

      assert {:error, %Error{category: :failed_precondition}} =
               Krait.execute_stream("sum_input", %{}, fn _ -> :ok end, pool: pool, input: [1])

      assert {:error, %Error{category: :failed_precondition, message: message}} =
               Krait.execute("sum_input", %{}, pool: pool)

      assert message =~ "input"

      # the whole input as a JSON array argument needs no input:
      assert {:ok, 3} = Krait.execute("sum_input", %{items: [%{i: 1}, %{i: 2}]}, pool: pool)

      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.execute("sum_input", %{}, pool: pool, input: :not_enumerable)

      assert message =~ "option :input must be an Enumerable"
    end

    # A gate: item n may be produced once {:allow, n} arrived (item 0 at once).
    defp start_gate, do: spawn_link(fn -> gate(0, []) end)

    defp gate(allowed, waiting) do
      {ready, waiting} = Enum.split_with(waiting, fn {n, _} -> n <= allowed end)
      Enum.each(ready, fn {n, pid} -> send(pid, {:go, n}) end)

      receive do
        {:allow, n} -> gate(max(n, allowed), waiting)
        {:want, n, pid} -> gate(allowed, [{n, pid} | waiting])
        :stop -> :ok
      end
    end

    defp gate_wait(gate, n) do
      send(gate, {:want, n, self()})

      receive do
        {:go, ^n} -> true
      after
        10_000 -> raise "item #{n} was never allowed: the previous echo did not come back"
      end
    end
  end
end
