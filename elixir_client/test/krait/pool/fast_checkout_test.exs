defmodule Krait.Pool.FastCheckoutTest do
  # Checkout without a scheduler round trip (Krait.Pool.Cells) with real workers: the races a
  # caller's own claim can meet.
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.Pool.{Cells, Lease, Scheduler}

  @moduletag timeout: 120_000

  defp settled?(pool, size) do
    s = Krait.Pool.stats(pool)
    s.idle == size and s.busy == 0 and s.queue_length == 0
  end

  test "a caller without a session claims an idle worker itself; the scheduler holds the lease" do
    pool = start_pool!(size: 1)
    cells = Cells.lookup(pool)
    assert %Cells{} = cells
    assert {:ok, %Lease{pool: pid} = lease} = Scheduler.checkout(pool, nil, :hint, :infinity)
    assert pid == cells.pid
    # the worker is leased as far as the scheduler and other callers are concerned
    assert Krait.Pool.stats(pool).busy == 1
    assert Cells.claim(cells, make_ref(), :infinity) == :none
    Scheduler.checkin(lease)
    assert eventually(fn -> settled?(pool, 1) end)
    assert hd(Krait.Pool.stats(pool).workers).calls == 1
  end

  test "no round trip: checkout and give-back work while the scheduler is suspended" do
    pool = start_pool!(size: 2)
    sched = Process.whereis(pool)
    :sys.suspend(sched)

    try do
      deadline = System.monotonic_time(:millisecond) + 10_000
      assert {:ok, l1} = Scheduler.checkout(pool, nil, :hint, deadline)
      assert {:ok, l2} = Scheduler.checkout(pool, nil, :hint, deadline)
      assert l1.worker_id != l2.worker_id
      # the holder gives its worker back itself: the next caller has it at once
      Scheduler.checkin(l1)
      assert {:ok, l3} = Scheduler.checkout(pool, nil, :hint, deadline)
      assert l3.worker_id == l1.worker_id
      Scheduler.checkin(l2)
      Scheduler.checkin(l3)
    after
      :sys.resume(sched)
    end

    assert eventually(fn -> settled?(pool, 2) end)
    assert Enum.sum(Enum.map(Krait.Pool.stats(pool).workers, & &1.calls)) == 3
  end

  test "many concurrent callers through a pool of 2: every call served, the books balance" do
    pool = start_pool!(size: 2)
    parent = self()

    pids =
      for i <- 1..40 do
        spawn_link(fn ->
          results = for j <- 1..25, do: Krait.execute("add", %{a: i, b: j}, pool: pool)
          send(parent, {:done, self(), results})
        end)
      end

    results = Enum.flat_map(pids, fn pid -> receive(do: ({:done, ^pid, r} -> r)) end)
    assert length(results) == 1_000
    assert Enum.all?(results, &match?({:ok, _}, &1))
    assert eventually(fn -> settled?(pool, 2) end)
    stats = Krait.Pool.stats(pool)
    assert Enum.sum(Enum.map(stats.workers, & &1.calls)) == 1_000
  end

  test "a waiter goes before a caller that arrives after the worker came back" do
    pool = start_pool!(size: 1)
    occupant = occupy(pool)
    test = self()

    waiter =
      Task.async(fn ->
        Krait.execute_stream(
          "blocking_stream",
          %{seconds: 1},
          fn _ -> send(test, :waiter_runs) end,
          pool: pool
        )
      end)

    assert eventually(fn -> Krait.Pool.stats(pool).queue_length == 1 end)
    occupant.()
    late = Task.async(fn -> Krait.execute("add", %{a: 1, b: 1}, pool: pool) end)
    # the late caller cannot have the worker before the waiter: it waits behind it
    assert_receive :waiter_runs, 5_000
    assert {:ok, 2.0} = Task.await(late, 10_000)
    Task.await(waiter, 10_000)
  end

  test "a lease given back while a caller waits goes to that waiter, not to the next claim" do
    pool = start_pool!(size: 1)
    test = self()
    deadline = fn -> System.monotonic_time(:millisecond) + 20_000 end
    {:ok, lease} = Scheduler.checkout(pool, nil, :hint, deadline.())

    waiter =
      Task.async(fn ->
        Krait.execute_stream(
          "blocking_stream",
          %{seconds: 1},
          fn _ -> send(test, :waiter_runs) end,
          pool: pool
        )
      end)

    assert eventually(fn -> Krait.Pool.stats(pool).queue_length == 1 end)
    # given back while the scheduler is held up: no caller may claim the worker the waiter is owed
    sched = Process.whereis(pool)
    :sys.suspend(sched)
    Scheduler.checkin(lease)
    other = Task.async(fn -> Scheduler.checkout(pool, nil, :hint, deadline.()) end)
    refute Task.yield(other, 200)
    :sys.resume(sched)
    # the waiter runs first; the other caller has the worker after it (released when it exits)
    assert {:ok, _} = Task.await(other, 10_000)
    assert_received :waiter_runs
    Task.await(waiter, 10_000)
  end

  test "a caller killed right after its claim: the worker comes back" do
    pool = start_pool!(size: 1)
    test = self()

    {pid, mon} =
      spawn_monitor(fn ->
        {:ok, lease} = Scheduler.checkout(pool, nil, :hint, :infinity)
        send(test, {:lease, lease})
        Process.exit(self(), :kill)
      end)

    assert_receive {:lease, _lease}, 5_000
    assert_receive {:DOWN, ^mon, :process, ^pid, :killed}
    assert eventually(fn -> settled?(pool, 1) end)
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
  end

  test "a caller killed between its claim and telling the scheduler: the claim is adopted" do
    pool = start_pool!(size: 1)
    cells = Cells.lookup(pool)

    {pid, mon} =
      spawn_monitor(fn ->
        {:ok, _claim, _worker} = Cells.claim(cells, make_ref(), :infinity)
        # never casts {:claimed, ...}
      end)

    assert_receive {:DOWN, ^mon, :process, ^pid, :normal}
    # a session call goes through the scheduler, which finds the cell claimed, adopts the claim,
    # sees its caller dead, and serves the call
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, session_id: "s1")
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
    assert eventually(fn -> settled?(pool, 1) end)
    # and the worker is offered to callers' own claims again
    assert {:ok, claim, _} = Cells.claim(cells, make_ref(), :infinity)
    Cells.give_back(cells, claim)
  end

  test "an idle worker killed: no call is handed to it, its restart is offered again" do
    pool = start_pool!(size: 2)
    [victim | _] = worker_os_pids(pool)
    os_kill(victim, "KILL")

    results = for i <- 1..50, do: Krait.execute("add", %{a: i, b: 0}, pool: pool, timeout: 20_000)
    # at most a call racing the death itself fails
    assert Enum.count(results, &match?({:ok, _}, &1)) >= 49
    assert eventually(fn -> settled?(pool, 2) end, 20_000)
    assert {:ok, _} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
    # both cells are offered again
    cells = Cells.lookup(pool)
    claims = for _ <- 1..2, do: Cells.claim(cells, make_ref(), :infinity)
    assert Enum.all?(claims, &match?({:ok, _, _}, &1))
  end

  test "a pool taking several calls per worker keeps the scheduler's path" do
    pool = start_pool!(size: 1, calls_per_worker: 2)
    assert Cells.lookup(pool) == nil
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
  end
end
