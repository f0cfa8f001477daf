defmodule Krait.Pool.AffinityTest do
  # Session affinity with real workers: `session_counter` keeps a count in the session's state on the
  # worker and reports which worker served it.
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_pool!(size: 2)}
  end

  defp count(pool, session, opts \\ []) do
    Krait.execute("session_counter", %{}, [pool: pool, session_id: session] ++ opts)
  end

  defp session, do: "session-#{System.unique_integer([:positive])}"

  test "a session stays on its worker and keeps its state there", %{pool: pool} do
    s = session()
    {:ok, %{"count" => 1, "worker_id" => w}} = count(pool, s)

    for n <- 2..6 do
      assert {:ok, %{"count" => ^n, "worker_id" => ^w}} = count(pool, s)
    end
  end

  test ":hint runs on another worker while the session's worker is busy", %{pool: pool} do
    s = session()
    {:ok, %{"worker_id" => w}} = count(pool, s)
    release = occupy(pool, session_id: s)
    assert {:ok, %{"worker_id" => other, "count" => 1}} = count(pool, s, affinity: :hint)
    assert other != w
    release.()

    assert {:ok, %{"worker_id" => ^w, "count" => 2}} =
             eventually(fn -> ok_on(count(pool, s), w) end)
  end

  test ":strict_fail_fast answers :worker_busy at once", %{pool: pool} do
    s = session()
    {:ok, _} = count(pool, s)
    release = occupy(pool, session_id: s)

    assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
             count(pool, s, affinity: :strict_fail_fast)

    release.()
  end

  test ":strict_fail_fast answers :worker_busy for a first call while every worker is busy", %{
    pool: pool
  } do
    releases = for _ <- 1..2, do: occupy(pool, session_id: session())
    s = session()

    # queued instead, it would end in :queue_timeout
    assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
             count(pool, s, affinity: :strict_fail_fast, timeout: 2_000)

    assert %{queue_length: 0} = Krait.Pool.stats(pool)
    Enum.each(releases, & &1.())

    # nothing was bound: once a worker is free the session starts afresh
    assert {:ok, %{"count" => 1}} =
             eventually(fn -> ok(count(pool, s, affinity: :strict_fail_fast)) end)
  end

  test ":strict_queue waits for the session's worker", %{pool: pool} do
    s = session()
    {:ok, %{"worker_id" => w}} = count(pool, s)
    release = occupy(pool, session_id: s)
    waiter = Task.async(fn -> count(pool, s, affinity: :strict_queue, timeout: 10_000) end)
    assert eventually(fn -> Krait.Pool.stats(pool).queue_length == 1 end)
    assert Task.yield(waiter, 200) == nil
    release.()
    assert {:ok, %{"worker_id" => ^w, "count" => 2}} = Task.await(waiter)
  end

  test ":strict_queue waiting counts in the timeout", %{pool: pool} do
    s = session()
    {:ok, _} = count(pool, s)
    release = occupy(pool, session_id: s)

    assert {:error, %Error{category: :pool, details: %{reason: :queue_timeout}}} =
             count(pool, s, affinity: :strict_queue, timeout: 200)

    release.()
  end

  test "concurrent first calls of one session land on one worker (hint)", %{pool: pool} do
    # Both workers busy: the session's calls all wait as first calls; the binding made for the
    # first one to get a worker takes the others there too.
    releases = for _ <- 1..2, do: occupy(pool, session_id: session())
    s = session()

    tasks =
      for _ <- 1..8, do: Task.async(fn -> count(pool, s, affinity: :hint, timeout: 30_000) end)

    assert eventually(fn -> Krait.Pool.stats(pool).queue_length == 8 end)
    Enum.each(releases, & &1.())

    served = for {:ok, r} <- Enum.map(tasks, &Task.await(&1, 30_000)), do: r
    assert length(served) == 8
    assert served |> Enum.map(& &1["worker_id"]) |> Enum.uniq() |> length() == 1
    assert served |> Enum.map(& &1["count"]) |> Enum.sort() == Enum.to_list(1..8)
  end

  for affinity <- [:strict_queue, :strict_fail_fast] do
    test "concurrent first calls of one session land on one worker (#{affinity})", %{pool: pool} do
      s = session()

      results =
        1..8
        |> Enum.map(fn _ -> Task.async(fn -> count(pool, s, affinity: unquote(affinity)) end) end)
        |> Enum.map(&Task.await/1)

      served = for {:ok, r} <- results, do: r
      assert served != []
      assert served |> Enum.map(& &1["worker_id"]) |> Enum.uniq() |> length() == 1
      assert served |> Enum.map(& &1["count"]) |> Enum.sort() == Enum.to_list(1..length(served))

      for {:error, e} <- results do
        assert %Error{category: :pool, details: %{reason: :worker_busy}} = e
        assert unquote(affinity) == :strict_fail_fast
      end
    end
  end

  test ":hint does not wait for a session's long first call", %{pool: pool} do
    # The issue's case: the first call of the session is a long stream; other calls of the session
    # run on the idle worker instead of waiting for it.
    s = session()
    release = occupy(pool, session_id: s)
    assert {:ok, %{"count" => 1}} = count(pool, s, affinity: :hint, timeout: 2_000)
    release.()
  end

  test "end_session drops the session's state and binding", %{pool: pool} do
    s = session()
    {:ok, _} = count(pool, s)
    {:ok, %{"count" => 2}} = count(pool, s)
    assert :ok = Krait.end_session(s, pool: pool)
    assert {:ok, %{"count" => 1}} = count(pool, s)
  end

  defp ok({:ok, _} = result), do: result
  defp ok(_), do: nil

  defp ok_on({:ok, %{"worker_id" => w}} = result, w), do: result
  defp ok_on(_, _), do: nil
end
