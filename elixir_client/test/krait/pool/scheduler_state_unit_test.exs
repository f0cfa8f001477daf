defmodule Krait.Pool.Scheduler.StateUnitTest do
  # Krait.Pool.Scheduler.State: a new scheduler's state, readiness and stats, as plain data.
  use ExUnit.Case, async: true

  alias Krait.Pool.{Lease, Queue, Workers}
  alias Krait.Pool.Queue.Waiter
  alias Krait.Pool.Scheduler.State

  @config %{name: :p, token: nil}

  defp with_workers(state, ready) do
    Enum.reduce(1..2, state, fn slot, st ->
      wid = "p-#{slot}.0"
      {:ok, t} = Workers.slot_started(st.table, slot, wid, 0, :ok)
      t = Workers.add(t, wid, make_ref(), self(), slot, nil, 0)

      t =
        if slot in ready do
          {:ok, _w, t} = Workers.ready(t, wid, self(), %{conn: :c, os_pid: slot}, 1, nil)
          {:added, t} = Workers.make_idle(t, wid)
          t
        else
          t
        end

      %{st | table: t}
    end)
  end

  test "a new state has no worker, nothing recycled, and is ready with no slot" do
    state = State.new(@config)
    assert %State{name: :p, failing: nil, overflow: false} = state
    assert Enum.all?(state.recycled, fn {_reason, n} -> n == 0 end)
    assert State.ready?(state)
  end

  test "ready? once every slot has a ready worker" do
    refute State.ready?(with_workers(State.new(@config), []))
    refute State.ready?(with_workers(State.new(@config), [1]))
    assert State.ready?(with_workers(State.new(@config), [1, 2]))
  end

  test "stats count the workers by status and the waiters" do
    state = with_workers(State.new(@config), [1])
    waiter = %Waiter{ref: make_ref(), from: nil, session: nil, affinity: :hint, deadline: 0}
    {_w, q} = Queue.push(state.queue, waiter)

    assert %{size: 2, ready: 1, idle: 1, busy: 0, starting: 1, queue_length: 1, token: nil} =
             State.stats(%{state | queue: q})

    token = State.stats(%{state | config: %{@config | token: fn -> "t" end}}).token
    assert token == "t"
  end

  test "a lease: its cell and cells only when it has a cell" do
    w = %{pid: self(), conn: :conn, channel: Krait.Link}
    ref = make_ref()

    assert %Lease{ref: ^ref, worker_id: "w", conn: :conn, cells: nil, cell: nil} =
             Lease.of(ref, :pool, "w", w, :cells, nil)

    assert %Lease{cells: :cells, cell: {1, 2, 3}} =
             Lease.of(ref, :pool, "w", w, :cells, {1, 2, 3})
  end
end
