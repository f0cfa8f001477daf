Code.require_file("duplex_case.exs", __DIR__)

defmodule Krait.Call.PoolHandlers do
  @moduledoc false
  # the pool handlers of Krait.Call.HandlersTest (a module of its own: defined before its pools start)
  def all, do: %{"pool_only" => &__MODULE__.pool_only/1, "shared" => &__MODULE__.shared/1}
  def pool_only(args), do: {:ok, %{"from" => "pool", "args" => args}}
  def shared(_args), do: "pool"
end

defmodule Krait.Call.HandlersTest do
  # `handlers:` against real showcase workers, over the link and gRPC: a tool's `ctx.call` runs an
  # Elixir function in a process of its own; every way a handler can fail reaches the tool as
  # HandlerError with its type (the `ask` tools return {"error": {type, message}}); pool handlers,
  # per-call ones winning; the pool stays healthy.
  import Krait.DuplexCase

  defduplex __MODULE__, size: 2, handlers: Krait.Call.PoolHandlers.all() do
    alias Krait.Error

    defp ask(pool, tool, name, handlers, extra \\ %{}) do
      Krait.execute(tool, Map.merge(%{name: name}, extra),
        pool: pool,
        handlers: handlers,
        timeout: 20_000
      )
    end

    test "a handler's value, {:ok, value}, and its arguments (sync and async tools)", %{
      pool: pool
    } do
      test = self()

      handlers = %{
        "double" => fn %{"x" => x} -> 2 * x end,
        "ok" => fn args -> {:ok, %{"got" => args}} end,
        "where" => fn _ ->
          send(test, {:ran_in, self()})
          "here"
        end
      }

      for tool <- ["ask", "aask"] do
        assert {:ok, 42} = ask(pool, tool, "double", handlers, %{args: %{x: 21}})
        assert {:ok, %{"got" => [1, "a"]}} = ask(pool, tool, "ok", handlers, %{args: [1, "a"]})
        # no args: an empty object
        assert {:ok, %{"got" => none}} = ask(pool, tool, "ok", handlers)
        assert none in [nil, %{}]
        assert {:ok, "here"} = ask(pool, tool, "where", handlers)
        assert_receive {:ran_in, pid}
        # never in the caller (nor the worker's process or the scheduler)
        assert pid != self()
        # and it ends with the call (it may still be exiting as the answer arrives)
        ref = Process.monitor(pid)
        assert_receive {:DOWN, ^ref, :process, ^pid, _}, 2_000
      end
    end

    test "every failure reaches the tool as HandlerError with its type", %{pool: pool} do
      handlers = %{
        "failed" => fn _ -> {:error, "no such user"} end,
        "raises" => fn _ -> raise ArgumentError, "bad id" end,
        "throws" => fn _ -> throw(:nope) end,
        "exits" => fn _ -> exit(:gone) end,
        "killed" => fn _ -> Process.exit(self(), :kill) end
      }

      for tool <- ["ask", "aask"] do
        for {name, type, text} <- [
              {"failed", "HandlerFailed", "no such user"},
              {"raises", "HandlerRaised", "bad id"},
              {"throws", "HandlerThrew", ":nope"},
              {"exits", "HandlerExited", ":gone"},
              {"killed", "HandlerExited", "killed"},
              {"missing", "HandlerNotFound", "missing"}
            ] do
          assert {:ok, %{"error" => %{"type" => ^type, "message" => message}}} =
                   ask(pool, tool, name, handlers),
                 "#{tool} #{name}"

          assert message =~ text
        end
      end

      assert_healthy(pool)
    end

    test "a handler past its time limit is killed and the tool sees HandlerTimeout", %{pool: pool} do
      test = self()

      handlers = %{
        "slow" => fn _ ->
          send(test, {:slow, self()})
          Process.sleep(30_000)
        end
      }

      for tool <- ["ask", "aask"] do
        started = System.monotonic_time(:millisecond)

        assert {:ok, %{"error" => %{"type" => "HandlerTimeout"}}} =
                 ask(pool, tool, "slow", handlers, %{timeout: 0.3})

        assert System.monotonic_time(:millisecond) - started < 10_000
        assert_receive {:slow, pid}
        eventually(fn -> not Process.alive?(pid) end)
      end

      assert_healthy(pool)
    end

    test "the call's deadline bounds a handler with no time limit of its own", %{pool: pool} do
      test = self()

      handlers = %{
        "hang" => fn _ ->
          send(test, {:hang, self()})
          Process.sleep(:infinity)
        end
      }

      assert {:error, %Error{category: :timeout}} =
               Krait.execute("ask", %{name: "hang"}, pool: pool, handlers: handlers, timeout: 700)

      assert_receive {:hang, pid}, 5_000
      # killed when the call ended
      eventually(fn -> not Process.alive?(pid) end)
      assert_healthy(pool)
    end

    test "a streaming tool calls a handler per chunk", %{pool: pool} do
      handlers = %{"square" => fn %{"i" => i} -> i * i end}

      assert [0, 1, 4, 9] =
               Krait.stream("ask_stream", %{name: "square", count: 4},
                 pool: pool,
                 handlers: handlers
               )
               |> Enum.map(& &1.data)
               |> Enum.reject(&is_nil/1)

      test = self()

      assert :ok =
               Krait.execute_stream(
                 "ask_stream",
                 %{name: "square", count: 2},
                 &send(test, {:chunk, &1}),
                 pool: pool,
                 handlers: handlers
               )

      assert [0, 1] = for(c <- received_chunks(), c.data != nil, do: c.data)
    end

    test "pool handlers reach every call; a call's own win", %{pool: pool} do
      assert {:ok, %{"from" => "pool", "args" => %{"a" => 1}}} =
               Krait.execute("ask", %{name: "pool_only", args: %{a: 1}}, pool: pool)

      assert {:ok, "pool"} = Krait.execute("ask", %{name: "shared"}, pool: pool)

      assert {:ok, "call"} =
               Krait.execute("ask", %{name: "shared"},
                 pool: pool,
                 handlers: %{shared: fn _ -> "call" end}
               )

      # the NotFound message lists what the call has, pool handlers included
      assert {:ok, %{"error" => %{"type" => "HandlerNotFound", "message" => message}}} =
               Krait.execute("ask", %{name: "nope"}, pool: pool)

      assert message =~ "pool_only"
    end

    test "bad handlers options are refused, naming the handler", %{pool: pool} do
      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.execute("ask", %{name: "x"}, pool: pool, handlers: %{"x" => fn -> 1 end})

      assert message =~ "handler \"x\" must be a 1-arity function"

      assert {:error, %Error{category: :invalid_argument}} =
               Krait.execute("ask", %{name: "x"}, pool: pool, handlers: [x: 1])

      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.Pool.start_link(
                 adapter: "adapters.showcase:ShowcaseAdapter",
                 name: :"bad_handlers_#{System.unique_integer([:positive])}",
                 handlers: %{"y" => :not_a_function}
               )

      assert message =~ "handler \"y\""
    end
  end
end
