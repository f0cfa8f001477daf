defmodule Krait.Pool.SchedulerTest do
  # The checkout queue and session affinity, driven with fake workers (no Python) so that every
  # interleaving is deterministic. Calls over real workers are tested in the other pool tests.
  use ExUnit.Case, async: true

  alias Krait.Pool.Scheduler
  import Krait.TestHelpers

  @moduletag timeout: 30_000

  defmodule BrokenWorker do
    @moduledoc "A worker that never starts: its pool is failing (`{:workers_failing, _}`) at once."
    use GenServer, restart: :temporary

    @spec start_link(map()) :: {:error, :cannot_start}
    def start_link(_opts), do: {:error, :cannot_start}

    @impl true
    def init(_opts), do: {:stop, :cannot_start}
  end

  setup context do
    name = :"KraitSchedTest#{System.unique_integer([:positive])}"

    opts =
      pool_opts(
        name: name,
        size: context[:size] || 2,
        worker_module: context[:worker_module] || Krait.Test.FakeWorker,
        max_queue: context[:max_queue] || 1_000,
        lease_grace: 50,
        session_ttl: context[:session_ttl] || 3_600_000,
        # a tag of 60_000 keeps a dead worker's slot empty for the whole test
        backoff_min: context[:backoff_min] || 20,
        cluster: context[:cluster] || false
      )

    start_supervised!({Krait.Pool, opts})
    unless context[:worker_module], do: :ok = Krait.Pool.await_ready(name, 5_000)
    %{pool: name}
  end

  # A process that checks out, reports, and checks in when told to.
  defp client(pool, session \\ nil, affinity \\ :hint, timeout \\ 5_000),
    do: client_until(pool, session, affinity, now() + timeout)

  # The same with an absolute deadline (or :infinity).
  defp client_until(pool, session, affinity, deadline) do
    test = self()

    spawn(fn ->
      result = Scheduler.checkout(pool, session, affinity, deadline)
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

  # Each branch of the checkout path that the tests above do not reach: a session's first call while
  # every worker is busy, per affinity; a session whose worker died; waiters whose deadline passes.
  describe "a session's first call while every worker is busy" do
    test ":strict_fail_fast answers :worker_busy at once, queues nothing and binds nothing", %{
      pool: pool
    } do
      holders = for _ <- 1..2, do: client(pool)
      leases = Enum.map(holders, &lease!/1)

      # were it queued, it would get :queue_timeout at its deadline instead
      assert {:error, :worker_busy} =
               Scheduler.checkout(pool, "ff1", :strict_fail_fast, now() + 1_000)

      assert %{queue_length: 0, sessions: 0, busy: 2} = Krait.Pool.stats(pool)

      # once a worker is free the same call gets it, and binds the session there
      Scheduler.checkin(hd(leases))
      assert {:ok, lease} = Scheduler.checkout(pool, "ff1", :strict_fail_fast, now() + 1_000)
      assert lease.worker_id == hd(leases).worker_id
      assert %{sessions: 1} = Krait.Pool.stats(pool)
    end

    test ":strict_queue waits for any worker, takes the first one freed and binds there", %{
      pool: pool
    } do
      [h1, h2] = for _ <- 1..2, do: client(pool)
      lease!(h1)
      b = lease!(h2)
      waiter = client(pool, "fq1", :strict_queue)
      wait_queue(pool, 1)
      assert %{sessions: 0} = Krait.Pool.stats(pool)

      # the second holder's worker frees first: a first call takes it (it has no worker of its own yet)
      release(h2)
      assert lease!(waiter).worker_id == b.worker_id

      assert {:error, :worker_busy} =
               Scheduler.checkout(pool, "fq1", :strict_fail_fast, now() + 1_000)

      release(waiter)
      assert {:ok, again} = Scheduler.checkout(pool, "fq1", :strict_fail_fast, now() + 1_000)
      assert again.worker_id == b.worker_id
    end

    @tag worker_module: BrokenWorker
    test "a failing pool answers every affinity with the start error, not :worker_busy", %{
      pool: pool
    } do
      assert eventually(fn -> Krait.Pool.stats(pool).failing end)

      for {session, affinity} <- [
            {nil, :hint},
            {"fb1", :hint},
            {"fb1", :strict_queue},
            {"fb1", :strict_fail_fast}
          ] do
        assert {:error, {:workers_failing, %{reason: :cannot_start}}} =
                 Scheduler.checkout(pool, session, affinity, now() + 1_000)
      end

      assert %{queue_length: 0, sessions: 0} = Krait.Pool.stats(pool)
    end
  end

  describe "a session whose worker is busy or dead" do
    test "a :hint call waits for any worker and takes the first one freed, not its own", %{
      pool: pool
    } do
      first = client(pool, "hb1")
      a = lease!(first)
      release(first)
      own = client(pool, "hb1")
      assert lease!(own).worker_id == a.worker_id
      other = client(pool)
      b = lease!(other)

      waiter = client(pool, "hb1", :hint)
      wait_queue(pool, 1)
      release(other)
      assert lease!(waiter).worker_id == b.worker_id
      # the session stays bound to its own worker
      release(own)
      assert {:ok, lease} = Scheduler.checkout(pool, "hb1", :strict_fail_fast, now() + 1_000)
      assert lease.worker_id == a.worker_id
    end

    @tag backoff_min: 60_000
    test "a :hint call whose worker died binds the session to the worker it gets", %{pool: pool} do
      first = client(pool, "hd1")
      a = lease!(first)
      release(first)
      :ok = GenServer.call(a.worker_pid, :stop)
      assert eventually(fn -> Krait.Pool.stats(pool).ready == 1 end)

      assert {:error, :session_worker_unavailable} =
               Scheduler.checkout(pool, "hd1", :strict_queue, now() + 1_000)

      assert {:ok, moved} = Scheduler.checkout(pool, "hd1", :hint, now() + 1_000)
      assert moved.worker_id != a.worker_id
      Scheduler.checkin(moved)

      # bound to its new worker now: strict calls go there instead of failing
      assert {:ok, lease} = Scheduler.checkout(pool, "hd1", :strict_fail_fast, now() + 1_000)
      assert lease.worker_id == moved.worker_id
    end

    @tag backoff_min: 60_000
    test "a :hint call whose worker died waits, as a first call, while the others are busy", %{
      pool: pool
    } do
      first = client(pool, "hd2")
      a = lease!(first)
      release(first)
      :ok = GenServer.call(a.worker_pid, :stop)
      assert eventually(fn -> Krait.Pool.stats(pool).ready == 1 end)
      holder = client(pool)
      b = lease!(holder)

      waiter = client(pool, "hd2", :hint)
      wait_queue(pool, 1)
      release(holder)
      assert lease!(waiter).worker_id == b.worker_id
    end

    @tag backoff_min: 60_000
    test "a first call that waited behind its session's dead worker: :hint moves on, strict fails",
         %{pool: pool} do
      [h1, h2] = for _ <- 1..2, do: client(pool)
      a = lease!(h1)
      b = lease!(h2)
      # both wait as first calls of the session, in the general queue
      c1 = client(pool, "hd3", :hint)
      wait_queue(pool, 1)
      c2 = client(pool, "hd3", :strict_queue)
      wait_queue(pool, 2)

      release(h1)
      assert lease!(c1).worker_id == a.worker_id
      # c1's worker dies with the session bound to it; c2 still waits in the general queue
      :ok = GenServer.call(a.worker_pid, :stop)
      assert eventually(fn -> Krait.Pool.stats(pool).ready == 1 end)
      release(h2)
      assert_receive {:checked_out, ^c2, {:error, :session_worker_unavailable}}, 2_000
      assert %{queue_length: 0, idle: 1} = Krait.Pool.stats(pool)
      refute b.worker_id == a.worker_id
    end

    @tag backoff_min: 60_000
    test "a :hint caller waiting for its session's worker when it dies is served by an idle one",
         %{
           pool: pool
         } do
      [h1, h2] = for _ <- 1..2, do: client(pool)
      a = lease!(h1)
      b = lease!(h2)
      c1 = client(pool, "hq1", :hint)
      wait_queue(pool, 1)
      c2 = client(pool, "hq1", :hint)
      wait_queue(pool, 2)

      # c1 binds the session to a; c2, a first call too, then waits for a (not for b, which goes idle)
      release(h1)
      assert lease!(c1).worker_id == a.worker_id
      release(h2)
      assert %{queue_length: 1, idle: 1} = Krait.Pool.stats(pool)
      refute_received {:checked_out, ^c2, _}

      :ok = GenServer.call(a.worker_pid, :stop)
      assert lease!(c2).worker_id == b.worker_id
    end
  end

  describe "waiters whose deadline passes" do
    @tag size: 1
    test "a general waiter that timed out leaves the queue: the freed worker goes to the next", %{
      pool: pool
    } do
      scheduler = Process.whereis(pool)
      holder = client(pool)
      a = lease!(holder)
      early = client(pool, nil, :hint, 100)
      wait_queue(pool, 1)
      late = client(pool, nil, :hint, 10_000)
      wait_queue(pool, 2)

      assert_receive {:checked_out, ^early, {:error, :queue_timeout}}, 2_000
      wait_queue(pool, 1)
      release(holder)
      assert lease!(late).worker_id == a.worker_id
      assert %{queue_length: 0, busy: 1} = Krait.Pool.stats(pool)
      assert Process.whereis(pool) == scheduler
    end

    test "a waiter for its session's worker that timed out leaves that worker's queue", %{
      pool: pool
    } do
      scheduler = Process.whereis(pool)
      first = client(pool, "tq1")
      a = lease!(first)
      release(first)
      holder = client(pool, "tq1")
      lease!(holder)
      early = client(pool, "tq1", :strict_queue, 100)
      wait_queue(pool, 1)
      late = client(pool, "tq1", :strict_queue, 10_000)
      wait_queue(pool, 2)

      assert_receive {:checked_out, ^early, {:error, :queue_timeout}}, 2_000
      wait_queue(pool, 1)
      release(holder)
      assert lease!(late).worker_id == a.worker_id
      assert %{queue_length: 0} = Krait.Pool.stats(pool)
      assert Process.whereis(pool) == scheduler
    end

    @tag size: 1
    test "a deadline already past answers :queue_timeout without queueing", %{pool: pool} do
      lease!(client(pool))
      assert {:error, :queue_timeout} = Scheduler.checkout(pool, nil, :hint, now() - 1)
      assert {:error, :queue_timeout} = Scheduler.checkout(pool, "tp1", :strict_queue, now() - 1)
      assert %{queue_length: 0} = Krait.Pool.stats(pool)
    end

    @tag size: 1
    test "an :infinity deadline waits without a timer and is served", %{pool: pool} do
      holder = client(pool)
      a = lease!(holder)
      waiter = client_until(pool, nil, :hint, :infinity)
      wait_queue(pool, 1)
      refute_received {:checked_out, ^waiter, _}
      release(holder)
      lease = lease!(waiter)
      assert lease.worker_id == a.worker_id
      # no lease timer either: it is held until given back
      Process.sleep(150)
      assert %{busy: 1} = Krait.Pool.stats(pool)
      release(waiter)
      assert %{busy: 0, idle: 1} = Krait.Pool.stats(pool)
    end
  end

  # A cluster pool's own checkout modes, on one node (no other pool in its group): what another node's
  # caller asks (:if_bound, :idle_only) and what its own callers do when no other node can help.
  describe "a cluster pool alone" do
    @describetag cluster: true

    test "another node's caller: :if_bound only for a bound session, :idle_only never queues", %{
      pool: pool
    } do
      assert {:error, :not_bound} =
               GenServer.call(pool, {:checkout, "cb1", :hint, now() + 1_000, :if_bound})

      holders = for _ <- 1..2, do: client(pool)
      [a, _] = Enum.map(holders, &lease!/1)

      assert {:error, :no_idle} =
               GenServer.call(pool, {:checkout, nil, :hint, now() + 1_000, :idle_only})

      assert %{queue_length: 0} = Krait.Pool.stats(pool)

      release(hd(holders))

      assert {:ok, lease} =
               GenServer.call(pool, {:checkout, "cb1", :hint, now() + 1_000, :idle_only})

      assert lease.worker_id == a.worker_id
      Scheduler.checkin(lease)
      # bound here now: :if_bound applies the affinity rules like a local call
      assert {:ok, again} =
               GenServer.call(pool, {:checkout, "cb1", :strict_queue, now() + 1_000, :if_bound})

      assert again.worker_id == a.worker_id
    end

    test "its own callers queue here when no other node has an idle worker", %{pool: pool} do
      holders = for _ <- 1..2, do: client(pool)
      [a, _] = Enum.map(holders, &lease!/1)

      assert {:error, :worker_busy} =
               Scheduler.checkout(pool, "cq1", :strict_fail_fast, now() + 1_000)

      plain = client(pool)
      wait_queue(pool, 1)
      first = client(pool, "cq2", :hint)
      wait_queue(pool, 2)
      release(hd(holders))
      assert lease!(plain).worker_id == a.worker_id
      release(plain)
      assert lease!(first).worker_id == a.worker_id
    end

    test "a session last served by a node that is gone: strict calls fail, :hint starts afresh",
         %{
           pool: pool
         } do
      GenServer.cast(pool, {:remote_session, "cr1", :"gone@127.0.0.1"})

      assert {:error, :session_worker_unavailable} =
               Scheduler.checkout(pool, "cr1", :strict_queue, now() + 1_000)

      assert {:error, :session_worker_unavailable} =
               Scheduler.checkout(pool, "cr1", :strict_fail_fast, now() + 1_000)

      assert {:ok, lease} = Scheduler.checkout(pool, "cr1", :hint, now() + 1_000)
      Scheduler.checkin(lease)
      # bound on this node now
      assert {:ok, again} = Scheduler.checkout(pool, "cr1", :strict_fail_fast, now() + 1_000)
      assert again.worker_id == lease.worker_id
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
