defmodule Krait.Call.BadInputTest do
  # Bad input from Elixir callers ends in `{:error, %Krait.Error{}}` with the right category and never
  # crashes the caller: a `:pool` that is not a pool, an argument given both as an atom and a string,
  # a tool name that is not one; and over the local link, a float argument beyond a float's range and
  # a result JSON cannot hold (NaN, infinities) are refused by the worker instead of becoming nil.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  alias Krait.Error

  @moduletag timeout: 120_000

  setup_all do
    %{
      pool:
        start_module_pool!(
          adapter: "tests.fixtures.nonfinite:NonFiniteAdapter",
          size: 1,
          transport: :link
        )
    }
  end

  # every entry point, each returning {:error, e} (Krait.stream/3 raises it, as documented)
  defp outcomes(tool, args, opts) do
    stream =
      try do
        Krait.stream(tool, args, opts) |> Enum.to_list()
      rescue
        e in Krait.Error -> {:error, e}
      end

    [
      Krait.execute(tool, args, opts),
      Krait.execute_stream(tool, args, fn _ -> :ok end, opts),
      stream
    ]
  end

  describe ":pool naming something that is not a pool" do
    test "a pid or a name that is no pool's is a :pool error, a wrong type a wrong option; nothing is sent" do
      other = spawn(fn -> receive do: (:stop -> :ok) end)
      {:ok, agent} = Agent.start_link(fn -> :untouched end)

      for {pool, reason} <- [
            {self(), :not_a_pool},
            {other, :not_a_pool},
            {agent, :not_a_pool},
            {{:global, :nothing_here}, :not_a_pool},
            {:no_such_pool, :pool_not_running}
          ] do
        for result <- outcomes("add", %{a: 1, b: 2}, pool: pool, timeout: 2_000) do
          assert {:error, %Error{category: :pool, details: %{reason: ^reason}} = e} = result
          if reason == :not_a_pool, do: assert(e.message =~ "not a Krait pool")
        end

        assert {:error, %Error{category: :pool}} = Krait.list_tools(pool: pool)
      end

      # a value of the wrong type is a wrong option, named as such (before any pool is looked for)
      for pool <- ["MyPool", 42, [1], nil] do
        for result <- outcomes("add", %{a: 1, b: 2}, pool: pool, timeout: 2_000) do
          assert {:error, %Error{category: :invalid_argument, message: message}} = result
          assert message =~ "option :pool must be a pool name"
        end
      end

      # neither process got a checkout request: the agent is alive with its state, nothing arrived here
      assert Agent.get(agent, & &1) == :untouched
      assert Process.alive?(other)
      refute_received {:"$gen_call", _, _}
      send(other, :stop)
    end

    test "the pool's own name still works", %{pool: pool} do
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
    end
  end

  test "an argument given as an atom and as a string key is refused, naming it", %{pool: pool} do
    for args <- [%{:value => 1, "value" => 2}, [value: 1, value: 2]] do
      for result <- outcomes("echo", args, pool: pool) do
        assert {:error, %Error{category: :invalid_argument, message: message}} = result
        assert message =~ ~s(argument "value" is given twice)
      end
    end

    assert {:ok, %{"a" => 1}} = Krait.execute("echo", %{"value" => %{"a" => 1}}, pool: pool)
  end

  test "a tool name that is not a name is :invalid_argument; an atom is a convenience", %{
    pool: pool
  } do
    for tool <- [nil, true, "", 42, {:add}, <<0xFF, 0xFE>>] do
      for result <- outcomes(tool, %{}, pool: pool) do
        assert {:error, %Error{category: :invalid_argument, message: message}} = result
        assert message =~ "tool name must be"
      end
    end

    assert {:ok, 3.0} = Krait.execute(:add, %{a: 1, b: 2}, pool: pool)
  end

  describe "over the local link" do
    test "a float argument beyond a float's range is :invalid_argument naming it", %{pool: pool} do
      huge = Integer.pow(2, 10_000)

      assert {:error, %Error{category: :invalid_argument, message: message}} =
               Krait.execute("add", %{a: huge, b: 1}, pool: pool)

      assert message =~ "add: argument 'a': a number beyond a float's range"
    end

    test "a non-finite result is refused, never nil", %{pool: pool} do
      for {number, shape, where} <- [
            {"inf", "bare", "result is inf"},
            {"nan", "nested", "result['scores'][1] is nan"},
            {"-inf", "array", "result['values'][1] is -inf"}
          ] do
        assert {:error, %Error{category: :failed_precondition, details: details} = e} =
                 Krait.execute("non_finite", %{number: number, shape: shape}, pool: pool)

        assert details.type == "ResultError"
        assert e.message =~ "non_finite: #{where}, not a finite number"
      end

      # an overflowing sum of two fine arguments: the same refusal
      assert {:error, %Error{category: :failed_precondition, message: message}} =
               Krait.execute("add", %{a: 1.0e308, b: 1.0e308}, pool: pool)

      assert message =~ "add: result is inf"
    end

    test "a non-finite chunk ends the stream after the chunks before it", %{pool: pool} do
      test = self()

      assert {:error, %Error{category: :failed_precondition, message: message}} =
               Krait.execute_stream("non_finite_stream", %{}, &send(test, {:chunk, &1.data}),
                 pool: pool
               )

      assert message =~ "non_finite_stream: chunk 1['scores'][1] is nan"
      assert_received {:chunk, %{"i" => 0}}
      refute_received {:chunk, _}

      assert {:ok, %{"value" => nil, "text" => "null"}} =
               Krait.execute("real_null", %{}, pool: pool)
    end
  end
end
