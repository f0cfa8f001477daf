defmodule Krait.Pool.SchedulerTest do
  # The checkout queue and session affinity, driven with fake workers (no Python) so that every
  # interleaving is deterministic. Calls over real workers are tested in the other pool tests.
  use ExUnit.Case, async: true

  alias Krait.Pool.Scheduler
  import Krait.TestHelpers

  @moduletag timeout: 30_000

  setup context do
    name = :"KraitSchedTest#{System.unique_integer([:positive])}"

    opts =
      pool_opts(
        name: name,
        size: context[:size] || 2,
        worker_module: Krait.Test.FakeWorker,
        max_queue: context[:max_queue] || 1_000,
        lease_grace: 50,
        session_ttl: context[:session_ttl] || 3_600_000,
        backoff_min: 20
      )

    start_supervised!({Krait.Pool, opts})
    :ok = Krait.Pool.await_ready(name, 5_000)
    %{pool: name}
  end

  # A process that checks out, reports, and checks in when told to.
  defp client(pool, session \\ nil, affinity \\ :hint, timeout \\ 5_000) do
    test = self()

    spawn(fn ->
      result = Scheduler.checkout(pool, session, affinity, now() + timeout)
      send(test, {:checked_out, self(), result})

      receive do
        :release ->
          with {:ok, lease} <- result, do: Scheduler.checkin(lease)
          send(test, {:released, self()})
      end
    end)
  end

  defp lease!(pid) do
    assert_receive {:checked_out, ^pid, {:ok, lease}}, 2_000
    lease
  end

  defp release(pid) do
    send(pid, :release)
    assert_receive {:released, ^pid}, 2_000
  end

  defp queue_length(pool), do: Krait.Pool.stats(pool).queue_length
  defp wait_queue(pool, n), do: eventually(fn -> queue_length(pool) == n end, 2_000)
  defp now, do: System.monotonic_time(:millisecond)

  describe "queue" do
    @tag size: 1
    test "waiters are served first in, first out", %{pool: pool} do
      holder = client(pool)
      lease!(holder)

      waiters =
        for i <- 1..5 do
          pid = client(pool)
          wait_queue(pool, i)
          pid
        end

      release(holder)

      for pid <- waiters do
        lease!(pid)
        refute_received {:checked_out, _, _}
        release(pid)
      end

      assert %{queue_length: 0, idle: 1, busy: 0} = Krait.Pool.stats(pool)
    end

    @tag size: 1
    test "waiting counts inside the deadline: :queue_timeout", %{pool: pool} do
      lease!(client(pool))
      started = now()
      assert {:error, :queue_timeout} = Scheduler.checkout(pool, nil, :hint, now() + 100)
      assert (now() - started) in 90..1_000
      assert queue_length(pool) == 0
    end

    @tag size: 1, max_queue: 2
    test "a full queue answers :pool_saturated at once", %{pool: pool} do
      lease!(client(pool))
      client(pool)
      client(pool)
      wait_queue(pool, 2)
      assert {:error, :pool_saturated} = Scheduler.checkout(pool, nil, :hint, now() + 5_000)
    end

    @tag size: 1
    test "a waiter that dies leaves the queue", %{pool: pool} do
      holder = client(pool)
      lease!(holder)
      waiter = client(pool)
      wait_queue(pool, 1)
      Process.exit(waiter, :kill)
      wait_queue(pool, 0)
      release(holder)
      assert %{idle: 1, busy: 0} = Krait.Pool.stats(pool)
    end

    @tag size: 1
    test "a caller that dies holding a worker gives it back", %{pool: pool} do
      holder = client(pool)
      lease!(holder)
      waiter = client(pool)
      wait_queue(pool, 1)
      Process.exit(holder, :kill)
      lease!(waiter)
    end

    @tag size: 1
    test "a worker held past the deadline is taken back", %{pool: pool} do
      holder = client(pool, nil, :hint, 50)
      lease = lease!(holder)
      # lease_grace is 50 ms
      assert {:ok, lease2} = Scheduler.checkout(pool, nil, :hint, now() + 2_000)
      assert lease2.worker_id == lease.worker_id
      # the late checkin of the first lease must not free the worker held by the second
      release(holder)
      assert %{busy: 1} = Krait.Pool.stats(pool)
      Scheduler.checkin(lease2)
      assert %{busy: 0, idle: 1} = Krait.Pool.stats(pool)
    end

    @tag size: 2, max_queue: 5_000
    test "thousands of waiters: each served once, in order", %{pool: pool} do
      holders = for _ <- 1..2, do: client(pool)
      leases = Enum.map(holders, &lease!/1)
      n = 3_000
      test = self()

      for i <- 1..n do
        spawn(fn ->
          {:ok, lease} = Scheduler.checkout(pool, nil, :hint, now() + 20_000)
          send(test, {:served, i})
          Scheduler.checkin(lease)
        end)
      end

      wait_queue(pool, n)
      Enum.each(leases, &Scheduler.checkin/1)
      served = for _ <- 1..n, do: assert_receive({:served, i}, 5_000) && i
      assert Enum.sort(served) == Enum.to_list(1..n)
      assert eventually(fn -> Krait.Pool.stats(pool).idle == 2 end)
    end
  end

  describe "session affinity" do
    test "the first call binds the session; :hint falls back while its worker is busy", %{
      pool: pool
    } do
      first = client(pool, "s1")
      a = lease!(first)
      release(first)

      holder = client(pool, "s1")
      assert lease!(holder).worker_id == a.worker_id
      other = client(pool, "s1", :hint)
      assert lease!(other).worker_id != a.worker_id
    end

    test ":strict_fail_fast answers :worker_busy, :strict_queue waits for the session's worker",
         %{pool: pool} do
      first = client(pool, "s2")
      a = lease!(first)
      release(first)
      holder = client(pool, "s2")
      lease!(holder)

      assert {:error, :worker_busy} =
               Scheduler.checkout(pool, "s2", :strict_fail_fast, now() + 1_000)

      waiter = client(pool, "s2", :strict_queue)
      wait_queue(pool, 1)
      # the other worker is idle, but the waiter wants its own
      assert %{idle: 1} = Krait.Pool.stats(pool)
      release(holder)
      assert lease!(waiter).worker_id == a.worker_id
    end

    test "while the first call runs, a :hint call of the session takes a free worker", %{
      pool: pool
    } do
      first = client(pool, "s3", :hint)
      a = lease!(first)
      second = client(pool, "s3", :hint)
      assert lease!(second).worker_id != a.worker_id
      assert queue_length(pool) == 0
      release(second)
      release(first)
    end

    test "while the first call runs, a :strict_queue call of the session waits for its worker", %{
      pool: pool
    } do
      first = client(pool, "s3q", :hint)
      a = lease!(first)
      second = client(pool, "s3q", :strict_queue)
      wait_queue(pool, 1)
      release(first)
      assert lease!(second).worker_id == a.worker_id
    end

    @tag size: 2
    test "concurrent first calls queued behind busy workers land on one worker", %{pool: pool} do
      holders = for _ <- 1..2, do: client(pool)
      leases = Enum.map(holders, &lease!/1)

      callers =
        for i <- 1..4 do
          pid = client(pool, "s4", Enum.at([:hint, :strict_queue, :hint, :strict_queue], i - 1))
          wait_queue(pool, i)
          pid
        end

      Enum.each(leases, &Scheduler.checkin/1)

      ids =
        for pid <- callers do
          id = lease!(pid).worker_id
          release(pid)
          id
        end

      assert length(Enum.uniq(ids)) == 1
    end

    test "strict modes answer :session_worker_unavailable once the worker died; :hint moves on",
         %{pool: pool} do
      first = client(pool, "s5")
      a = lease!(first)
      release(first)

      holder = client(pool, "s5")
      lease!(holder)
      waiter = client(pool, "s5", :strict_queue)
      wait_queue(pool, 1)

      :ok = GenServer.call(a.worker_pid, :stop)
      assert_receive {:checked_out, ^waiter, {:error, :session_worker_unavailable}}, 2_000

      assert {:error, :session_worker_unavailable} =
               Scheduler.checkout(pool, "s5", :strict_queue, now() + 1_000)

      assert {:error, :session_worker_unavailable} =
               Scheduler.checkout(pool, "s5", :strict_fail_fast, now() + 1_000)

      assert {:ok, lease} = Scheduler.checkout(pool, "s5", :hint, now() + 2_000)
      assert lease.worker_id != a.worker_id
      Scheduler.checkin(lease)
      # the replacement starts after the backoff
      assert eventually(fn -> Krait.Pool.stats(pool).ready == 2 end)
    end

    @tag session_ttl: 50
    test "unused session bindings expire", %{pool: pool} do
      first = client(pool, "s7")
      lease!(first)
      release(first)
      assert %{sessions: 1} = Krait.Pool.stats(pool)
      assert eventually(fn -> Krait.Pool.stats(pool).sessions == 0 end, 2_000)
    end

    test "forgetting a session lets it bind anew", %{pool: pool} do
      first = client(pool, "s6")
      lease!(first)
      release(first)
      assert %{sessions: 1} = Krait.Pool.stats(pool)
      :ok = Scheduler.forget_session(pool, "s6")
      assert %{sessions: 0} = Krait.Pool.stats(pool)
    end
  end

  test "stats report workers, restarts and counts", %{pool: pool} do
    c = client(pool)
    lease!(c)
    release(c)

    assert %{size: 2, ready: 2, busy: 0, idle: 2, starting: 0, workers: workers} =
             Krait.Pool.stats(pool)

    assert Enum.sum(Enum.map(workers, & &1.calls)) == 1
    assert Enum.all?(workers, &(&1.restarts == 0))
  end

  test "checkout from a pool that is not running", _ do
    assert {:error, :pool_not_running} = Scheduler.checkout(NoSuchPool, nil, :hint, now() + 100)
  end
end
