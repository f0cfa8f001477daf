defmodule Krait.Pool.PlacementUnitTest do
  # Krait.Pool.Placement: where a call goes, as a table of cases over plain data (no process).
  use ExUnit.Case, async: true

  alias Krait.Pool.{Placement, Sessions, Workers}

  @failure %{worker_id: "p-1.0", reason: :boom, output: ""}

  # A table from `{id, status, recycle}` (idle ones are listed in `idle` in the given order).
  defp table(workers) do
    Enum.reduce(workers, Workers.new(), fn {wid, status, recycle}, t ->
      w = %{status: status, leases: [], given: 0, calls: 0, recycle: recycle, slot: wid}
      t = %{t | workers: Map.put(t.workers, wid, w)}
      if status == :idle, do: %{t | idle: t.idle ++ [wid]}, else: t
    end)
  end

  defp sessions(bindings),
    do:
      Enum.reduce(bindings, Sessions.new(), fn {sid, wid}, s -> Sessions.touch(s, sid, wid, 0) end)

  @idle_ab [{"a", :idle, nil}, {"b", :idle, nil}]
  @busy_a_idle_b [{"a", :busy, nil}, {"b", :idle, nil}]
  @all_busy [{"a", :busy, nil}, {"b", :busy, nil}]
  @retiring_a [{"a", :retiring, :calls}, {"b", :idle, nil}]
  @due_a [{"a", :idle, :calls}, {"b", :idle, nil}]

  # {case, session, affinity, bindings, workers, failing, expected placement, binding of "s" after}
  @cases [
    {"no session: the longest idle", nil, :hint, [], @idle_ab, nil, {:assign, "a"}, nil},
    {"no session: passes over one due for recycling", nil, :hint, [], @due_a, nil, {:assign, "b"},
     nil},
    {"no session, all busy: queue", nil, :hint, [], @all_busy, nil, {:enqueue, :any}, nil},
    {"no session, all busy, failing: fail", nil, :hint, [], @all_busy, @failure,
     {:error, {:workers_failing, @failure}}, nil},
    {"first call: idle worker", "s", :strict_queue, [], @busy_a_idle_b, nil, {:assign, "b"}, nil},
    {"first call, all busy: queue", "s", :strict_queue, [], @all_busy, nil, {:enqueue, :any},
     nil},
    {"first call, all busy, failing", "s", :hint, [], @all_busy, @failure,
     {:error, {:workers_failing, @failure}}, nil},
    {"first fail-fast call, idle worker", "s", :strict_fail_fast, [], @busy_a_idle_b, nil,
     {:assign, "b"}, nil},
    {"first fail-fast call, all busy: all_busy", "s", :strict_fail_fast, [], @all_busy, nil,
     {:error, :all_busy}, nil},
    {"first fail-fast call, all busy, failing: the failure", "s", :strict_fail_fast, [],
     @all_busy, @failure, {:error, {:workers_failing, @failure}}, nil},
    {"bound, its worker idle", "s", :strict_queue, [{"s", "b"}], @idle_ab, nil, {:assign, "b"},
     "b"},
    {"bound, worker busy, fail fast", "s", :strict_fail_fast, [{"s", "a"}], @busy_a_idle_b, nil,
     {:error, :worker_busy}, "a"},
    {"bound, worker busy, strict queue: waits for it", "s", :strict_queue, [{"s", "a"}],
     @busy_a_idle_b, nil, {:enqueue, "a"}, "a"},
    {"bound, worker busy, hint: another idle one", "s", :hint, [{"s", "a"}], @busy_a_idle_b, nil,
     {:assign, "b"}, "a"},
    {"bound, worker busy, hint, none idle: general queue", "s", :hint, [{"s", "a"}], @all_busy,
     nil, {:enqueue, :any}, "a"},
    {"bound, worker gone, hint: starts afresh", "s", :hint, [{"s", "x"}], @busy_a_idle_b, nil,
     {:assign, "b"}, nil},
    {"bound, worker gone, strict: unavailable", "s", :strict_queue, [{"s", "x"}], @idle_ab, nil,
     {:error, :session_worker_unavailable}, "x"},
    {"bound, worker gone, fail fast: unavailable", "s", :strict_fail_fast, [{"s", "x"}], @idle_ab,
     nil, {:error, :session_worker_unavailable}, "x"},
    {"bound, worker retiring: starts afresh", "s", :strict_queue, [{"s", "a"}], @retiring_a, nil,
     {:assign, "b"}, nil},
    {"bound, worker retiring, fail fast, none idle", "s", :strict_fail_fast, [{"s", "a"}],
     [{"a", :retiring, :age}, {"b", :busy, nil}], nil, {:error, :all_busy}, nil}
  ]

  for {name, session, affinity, bindings, workers, failing, expected, after_binding} <- @cases do
    test "place: #{name}" do
      {placed, sessions} =
        Placement.place(
          unquote(session),
          unquote(affinity),
          sessions(unquote(Macro.escape(bindings))),
          table(unquote(Macro.escape(workers))),
          unquote(Macro.escape(failing))
        )

      assert placed == unquote(Macro.escape(expected))
      assert Sessions.worker(sessions, "s") == unquote(after_binding)
    end
  end

  # {case, waiter (session, affinity, first), free worker, bindings, workers, expected, binding after}
  @dispatch_cases [
    {"no session: takes it", {nil, :hint, false}, "b", [], @busy_a_idle_b, :hand_over, nil},
    {"session not bound: takes it", {"s", :strict_queue, true}, "b", [], @busy_a_idle_b,
     :hand_over, nil},
    {"bound to this worker", {"s", :strict_queue, true}, "b", [{"s", "b"}], @busy_a_idle_b,
     :hand_over, "b"},
    {"bound to a gone worker, hint: takes it, starts afresh", {"s", :hint, false}, "b",
     [{"s", "x"}], @busy_a_idle_b, :hand_over, nil},
    {"bound to a retiring worker: takes it, starts afresh", {"s", :strict_queue, false}, "b",
     [{"s", "a"}], @retiring_a, :hand_over, nil},
    {"bound to a gone worker, strict: rejected", {"s", :strict_queue, false}, "b", [{"s", "x"}],
     @busy_a_idle_b, :reject, "x"},
    {"bound to a busy worker, hint, not first: takes it", {"s", :hint, false}, "b", [{"s", "a"}],
     @busy_a_idle_b, :hand_over, "a"},
    {"bound to a busy worker, hint, first: waits for its worker", {"s", :hint, true}, "b",
     [{"s", "a"}], @busy_a_idle_b, {:wait_for, "a"}, "a"},
    {"bound to a busy worker, strict: waits for it", {"s", :strict_queue, false}, "b",
     [{"s", "a"}], @busy_a_idle_b, {:wait_for, "a"}, "a"},
    {"bound to another idle worker: takes that one", {"s", :strict_queue, true}, "b",
     [{"s", "a"}], @idle_ab, {:take, "a"}, "a"},
    {"bound to a starting worker: waits for it", {"s", :hint, false}, "b", [{"s", "a"}],
     [{"a", :starting, nil}, {"b", :idle, nil}], {:wait_for, "a"}, "a"}
  ]

  for {name, {session, affinity, first}, wid, bindings, workers, expected, after_binding} <-
        @dispatch_cases do
    test "dispatch: #{name}" do
      waiter = %{session: unquote(session), affinity: unquote(affinity), first: unquote(first)}

      {dispatched, sessions} =
        Placement.dispatch(
          waiter,
          unquote(wid),
          sessions(unquote(Macro.escape(bindings))),
          table(unquote(Macro.escape(workers)))
        )

      assert dispatched == unquote(Macro.escape(expected))
      assert Sessions.worker(sessions, "s") == unquote(after_binding)
    end
  end

  @cluster %{name: :pool, nodes: [:up@host]}

  # {case, session, affinity, mode, bindings, remote binding, workers, cluster, expected}
  @checkout_cases [
    {"try, cluster, session unknown: ask the cluster", "s", :strict_queue, :try, [], nil,
     @idle_ab, @cluster, {:error, {:ask_cluster, :pool}}},
    {"try, cluster, bound on a connected node: ask the cluster", "s", :strict_queue, :try, [],
     :up@host, @idle_ab, @cluster, {:error, {:ask_cluster, :pool}}},
    {"try, cluster, bound on a node gone, strict: unavailable", "s", :strict_queue, :try, [],
     :down@host, @idle_ab, @cluster, {:error, :session_worker_unavailable}},
    {"try, cluster, bound on a node gone, hint: ask the cluster", "s", :hint, :try, [],
     :down@host, @idle_ab, @cluster, {:error, {:ask_cluster, :pool}}},
    {"try, cluster, bound here: placed here", "s", :strict_queue, :try, [{"s", "b"}], nil,
     @idle_ab, @cluster, {:assign, "b"}},
    {"try, no cluster, session unknown: placed", "s", :strict_queue, :try, [], nil, @idle_ab, nil,
     {:assign, "a"}},
    {"try, cluster, no session, all busy: no idle here", nil, :hint, :try, [], nil, @all_busy,
     @cluster, {:error, {:no_idle_here, :pool}}},
    {"first, cluster, all busy: no idle here", "s", :strict_queue, :first, [], nil, @all_busy,
     @cluster, {:error, {:no_idle_here, :pool}}},
    {"first, cluster, fail-fast first call, all busy: no idle here", "s", :strict_fail_fast,
     :first, [], nil, @all_busy, @cluster, {:error, {:no_idle_here, :pool}}},
    {"first, cluster, bound worker busy, strict: waits for it here", "s", :strict_queue, :first,
     [{"s", "a"}], nil, @all_busy, @cluster, {:enqueue, "a"}},
    {"queue, cluster, all busy: waits", "s", :strict_queue, :queue, [], nil, @all_busy, @cluster,
     {:enqueue, :any}},
    {"queue, cluster, fail-fast first call, all busy: worker busy", "s", :strict_fail_fast,
     :queue, [], nil, @all_busy, @cluster, {:error, :worker_busy}},
    {"try, no cluster, fail-fast first call, all busy: worker busy", "s", :strict_fail_fast, :try,
     [], nil, @all_busy, nil, {:error, :worker_busy}},
    {"try, no cluster, all busy: waits", nil, :hint, :try, [], nil, @all_busy, nil,
     {:enqueue, :any}},
    {"if_bound, not bound here", "s", :hint, :if_bound, [], nil, @idle_ab, @cluster,
     {:error, :not_bound}},
    {"if_bound, bound here", "s", :hint, :if_bound, [{"s", "b"}], nil, @idle_ab, @cluster,
     {:assign, "b"}},
    {"idle_only, all busy: no idle", nil, :hint, :idle_only, [], nil, @all_busy, @cluster,
     {:error, :no_idle}},
    {"idle_only, bound worker busy: no idle", "s", :strict_queue, :idle_only, [{"s", "a"}], nil,
     @all_busy, @cluster, {:error, :no_idle}},
    {"idle_only, fail-fast first call, all busy: no idle", "s", :strict_fail_fast, :idle_only, [],
     nil, @all_busy, @cluster, {:error, :no_idle}},
    {"idle_only, idle worker", nil, :hint, :idle_only, [], nil, @busy_a_idle_b, @cluster,
     {:assign, "b"}}
  ]

  for {name, session, affinity, mode, bindings, remote, workers, cluster, expected} <-
        @checkout_cases do
    test "checkout: #{name}" do
      sessions = sessions(unquote(Macro.escape(bindings)))
      remote = unquote(remote)
      sessions = if remote, do: Sessions.put_remote(sessions, "s", remote, 0), else: sessions

      {placed, _sessions} =
        Placement.checkout(
          unquote(session),
          unquote(affinity),
          unquote(mode),
          sessions,
          table(unquote(Macro.escape(workers))),
          nil,
          unquote(Macro.escape(cluster))
        )

      assert placed == unquote(Macro.escape(expected))
    end
  end

  # overflow?/3 is published for callers to skip the `:try` round trip: it must say yes exactly
  # when a :try checkout without a session would answer {:no_idle_here, _}.
  for {workers, failing, cluster?} <- [
        {@all_busy, nil, true},
        {@all_busy, @failure, true},
        {@all_busy, nil, false},
        {@busy_a_idle_b, nil, true},
        {@due_a, nil, true},
        {[{"a", :idle, :calls}, {"b", :busy, nil}], nil, true},
        {[{"a", :starting, nil}], nil, true},
        {[], nil, true}
      ] do
    test "overflow?: #{inspect({workers, failing != nil, cluster?})} agrees with a :try checkout" do
      table = table(unquote(Macro.escape(workers)))
      failing = unquote(Macro.escape(failing))
      cluster = if unquote(cluster?), do: @cluster

      {placed, _} = Placement.checkout(nil, :hint, :try, Sessions.new(), table, failing, cluster)
      expected = match?({:error, {:no_idle_here, _}}, placed)
      assert Placement.overflow?(unquote(cluster?), table, failing) == expected
    end
  end
end
