defmodule Krait.Pool.QueueTest do
  # Checkout queueing with real workers: a one-worker pool, held busy by a blocking stream.
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_pool!(size: 1, max_queue: 3)}
  end

  defp queued(pool, n), do: eventually(fn -> Krait.Pool.stats(pool).queue_length == n end)

  test "unary and streaming calls wait their turn, first in first out", %{pool: pool} do
    release = occupy(pool)
    test = self()

    calls = [
      fn -> Krait.execute("add", %{a: 1, b: 1}, pool: pool) end,
      fn -> Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> :ok end, pool: pool) end,
      fn -> Krait.stream("stream_numbers", %{count: 2}, pool: pool) |> Enum.count() end
    ]

    tasks =
      for {call, i} <- Enum.with_index(calls, 1) do
        task = Task.async(fn -> send(test, {:done, i, call.()}) end)
        queued(pool, i)
        task
      end

    release.()
    Enum.each(tasks, &Task.await/1)
    # on a one-worker pool they finish in the order they were served
    results = for _ <- 1..3, do: receive(do: ({:done, i, result} -> {i, result}))
    assert [{1, {:ok, 2.0}}, {2, :ok}, {3, 3}] = results
    assert %{queue_length: 0, busy: 0} = Krait.Pool.stats(pool)
  end

  test "the wait counts inside the call's timeout: :queue_timeout", %{pool: pool} do
    release = occupy(pool)
    started = System.monotonic_time(:millisecond)

    assert {:error, %Error{category: :pool, details: %{reason: :queue_timeout}}} =
             Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 200)

    assert {:error, %Error{category: :pool, details: %{reason: :queue_timeout}}} =
             Krait.execute_stream("stream_numbers", %{}, fn _ -> :ok end, pool: pool, timeout: 200)

    elapsed = System.monotonic_time(:millisecond) - started
    assert elapsed >= 400 and elapsed < 2_000
    assert Krait.Pool.stats(pool).queue_length == 0
    release.()
  end

  test "a full queue answers :pool_saturated", %{pool: pool} do
    release = occupy(pool)

    waiters =
      for i <- 1..3 do
        task = Task.async(fn -> Krait.execute("add", %{a: i, b: 0}, pool: pool) end)
        queued(pool, i)
        task
      end

    assert {:error, %Error{category: :pool, details: %{reason: :pool_saturated}}} =
             Krait.execute("add", %{a: 1, b: 1}, pool: pool)

    release.()
    assert [{:ok, 1.0}, {:ok, 2.0}, {:ok, 3.0}] = Enum.map(waiters, &Task.await/1)
  end
end
