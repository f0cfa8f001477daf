defmodule Krait.Pool.WorkersUnitTest do
  # Krait.Pool.Workers: the worker table's transitions as plain data (no process: pids and
  # monitors are only stored, so plain references and self() stand in for them).
  use ExUnit.Case, async: true

  alias Krait.Pool.Workers

  @info %{conn: :conn, os_pid: 42, grpc_port: 5000}

  # A table with worker `wid` of `slot` started (and ready when `ready?`): {table, its monitor}.
  defp started(t \\ Workers.new(), slot, gen \\ 0, ready? \\ true) do
    wid = "p-#{slot}.#{gen}"
    mon = make_ref()
    {:ok, t} = Workers.slot_started(t, slot, wid, gen, :ok)
    t = Workers.add(t, wid, mon, self(), slot, nil, 100)

    if ready? do
      {:ok, _w, t} = Workers.ready(t, wid, self(), @info, 200, nil)
      {t, mon}
    else
      {t, mon}
    end
  end

  # Ready workers go to the idle list by the scheduler's serve (make_idle).
  defp idle(t, wid) do
    {:added, t} = Workers.make_idle(t, wid)
    t
  end

  describe "slots" do
    test "a slot's first start, and a failed one counted" do
      {:ok, t} = Workers.slot_started(Workers.new(), 1, "p-1.0", 0, :ok)
      assert %{worker_id: "p-1.0", gen: 0, failures: 0, restarts: 0, timer: nil} = t.slots[1]

      {:failed, error, t} = Workers.slot_started(t, 1, "p-1.1", 1, {:error, :enoent})
      assert error == %{worker_id: "p-1.1", reason: :enoent, output: ""}
      assert %{gen: 1, failures: 1, start_failed: true, last_error: ^error} = t.slots[1]
    end

    test "a restart keeps the slot's counts; its due restart clears the timer" do
      {t, _mon} = started(1)
      timer = make_ref()
      t = Workers.restart_scheduled(t, 1, timer, 50)
      assert %{timer: ^timer, backoff: 50} = t.slots[1]
      assert {1, t} = Workers.restart_due(t, 1)
      assert t.slots[1].timer == nil
      assert Workers.restart_due(t, 2) == :gone
      {:ok, t} = Workers.slot_started(t, 1, "p-1.1", 1, :ok)
      assert %{worker_id: "p-1.1", gen: 1, backoff: 50} = t.slots[1]
    end

    test "went_down: a crash counts a failure in a row, a stable worker starts the backoff over" do
      {t, mon} = started(1)
      {wid, w, t} = Workers.remove(t, mon)
      assert {:restart, t1} = Workers.went_down(t, w, wid, :killed, [], 1_000, 10_000)
      assert %{failures: 1, restarts: 1} = t1.slots[1]
      assert {:restart, t2} = Workers.went_down(t1, w, wid, :killed, [], 1_000, 10_000)
      assert %{failures: 2, restarts: 2} = t2.slots[1]
      assert Workers.restart_delay(t2, 1, 100, 1_000) == 200
      # up longer than stable_after: failures start over
      assert {:restart, t3} = Workers.went_down(t2, w, wid, :killed, [], 20_000, 10_000)
      assert %{failures: 1, restarts: 3} = t3.slots[1]
      assert Workers.restart_delay(t3, 1, 100, 1_000) == 100
    end

    test "went_down while starting is a failed start with its output" do
      {t, mon} = started(Workers.new(), 1, 0, false)
      {wid, w, t} = Workers.remove(t, mon)

      assert {:failed, error, t} =
               Workers.went_down(t, w, wid, {:shutdown, {:exit_status, 1}}, ["a", "b"], 500, 10)

      assert error == %{worker_id: "p-1.0", reason: {:exit_status, 1}, output: "a\nb"}
      assert %{failures: 1, start_failed: true, last_error: ^error} = t.slots[1]
      assert Workers.failing?(t)
      assert Workers.start_error("w", :plain, []) == %{worker_id: "w", reason: :plain, output: ""}
    end

    test "failing? needs every slot failed and no worker up" do
      refute Workers.failing?(Workers.new())
      {t, _} = started(1)
      {:failed, _e, t} = Workers.slot_started(t, 2, "p-2.0", 0, {:error, :x})
      refute Workers.failing?(t)
    end

    test "logged, last_error, drop_slot" do
      {t, _} = started(1)
      assert Workers.logged(t, 1, 77).slots[1].logged_at == 77
      assert Workers.last_error(t, 1, %{reason: :x}).slots[1].last_error == %{reason: :x}
      assert {%{worker_id: "p-1.0"}, t2} = Workers.drop_slot(t, 1)
      assert t2.slots == %{}
      assert {nil, ^t2} = Workers.drop_slot(t2, 1)
    end
  end

  describe "workers" do
    test "add: starting, found by pid, id and slot; ready only for its own pid while starting" do
      {t, mon} = started(Workers.new(), 1, 0, false)
      assert %{status: :starting, spawned_at: 100, leases: []} = Workers.get(t, "p-1.0")
      assert Workers.find_pid(t, self()) == {mon, "p-1.0"}
      assert Workers.find_id(t, "p-1.0") == {mon, "p-1.0"}
      assert Workers.find_slot(t, 1) == {mon, "p-1.0"}
      assert Workers.find_slot(t, 2) == nil
      assert Workers.ready_count(t) == 0

      other = spawn(fn -> :ok end)
      assert Workers.ready(t, "p-1.0", other, @info, 200, nil) == :ignore
      assert Workers.ready(t, "nope", self(), @info, 200, nil) == :ignore

      {:failed, _e, t} = Workers.slot_started(t, 1, "p-1.0", 0, {:error, :x})
      assert {:ok, w, t} = Workers.ready(t, "p-1.0", self(), @info, 200, 5_000)
      assert %{status: :idle, conn: :conn, os_pid: 42, grpc_port: 5000, ready_at: 200} = w
      assert w.channel == Krait.GRPC.Connection and w.age_limit == 5_000
      assert t.slots[1].start_failed == false
      # not idle-listed until served; ready twice is ignored
      assert t.idle == []
      assert Workers.ready(t, "p-1.0", self(), @info, 300, nil) == :ignore
      assert Workers.ready_count(t) == 1
    end

    test "give and take back with one call per worker" do
      {t, _} = started(1)
      t = idle(t, "p-1.0")
      assert Workers.pick_idle(t) == "p-1.0"
      assert Workers.room?(t, "p-1.0", 1)
      ref = make_ref()
      t = Workers.give(t, "p-1.0", ref, 1)
      assert %{status: :busy, leases: [^ref], given: 1} = Workers.get(t, "p-1.0")
      assert t.idle == []
      refute Workers.room?(t, "p-1.0", 1)
      assert Workers.take_back(t, "p-1.0", make_ref(), 1) == :unknown
      assert Workers.take_back(t, "gone", ref, 1) == :unknown

      assert {:ok, %{status: :idle, leases: [], calls: 1}, t} =
               Workers.take_back(t, "p-1.0", ref, 1)

      # back in the idle list by serve (make_idle), once
      t = idle(t, "p-1.0")
      assert Workers.make_idle(t, "p-1.0") == :already
    end

    test "a worker with room for more calls stays idle, at the back" do
      {t, _} = started(1)
      {t, _} = started(t, 2)
      t = t |> idle("p-1.0") |> idle("p-2.0")
      t = Workers.give(t, "p-1.0", make_ref(), 2)
      assert t.idle == ["p-2.0", "p-1.0"]
      t = Workers.give(t, "p-1.0", make_ref(), 2)
      assert t.idle == ["p-2.0"]
      assert Workers.get(t, "p-1.0").status == :busy
    end

    test "unidle, take_all_idle, put, remove" do
      {t, _} = started(1)
      {t, mon2} = started(t, 2)
      t = t |> idle("p-1.0") |> idle("p-2.0")
      assert Workers.unidle(t, "p-1.0").idle == ["p-2.0"]
      assert {["p-1.0", "p-2.0"], %{idle: []}} = Workers.take_all_idle(t)
      assert Workers.get(Workers.put(t, "p-1.0", :rss_mb, 12.5), "p-1.0").rss_mb == 12.5
      {wid, w, t} = Workers.remove(t, mon2)
      assert wid == "p-2.0" and w.slot == 2
      assert Workers.get(t, "p-2.0") == nil and t.idle == ["p-1.0"]
      refute Map.has_key?(t.mons, mon2)
    end
  end

  describe "recycling" do
    test "a replacement starts in the slot, one at a time, and takes the slot when ready" do
      {t, _} = started(1)
      t = idle(t, "p-1.0")
      assert Workers.replacement_starting(t) == nil
      assert {:start, "p-1.1", 1} = Workers.successor_id(t, "p-1.0", "p")
      t = Workers.successor_started(t, 1, "p-1.1", 1, :ok)
      t = Workers.add(t, "p-1.1", make_ref(), self(), 1, "p-1.0", 300)
      assert Workers.successor_id(t, "p-1.0", "p") == :busy
      assert Workers.replacement_starting(t) == "p-1.0"

      {:ok, _w, t} = Workers.ready(t, "p-1.1", self(), @info, 400, nil)
      {old, t} = Workers.successor_ready(t, "p-1.1")
      assert old == "p-1.0"
      assert Workers.get(t, "p-1.1").successor_of == nil
      assert %{worker_id: "p-1.1", successor: nil, recycles: 1, recycle_failures: 0} = t.slots[1]

      assert {:ok, %{status: :retiring}, t} = Workers.retiring(t, "p-1.0")
      assert t.idle == []
      assert Workers.retiring(t, "p-1.0") == :gone
      assert Workers.retiring(t, "nope") == :gone
    end

    test "workers due wait their turn; one replacement starts at a time" do
      {t, _} = started(1)
      {t, _} = started(t, 2)
      {t, mon3} = started(t, 3)
      assert Workers.next_recycle(t) == {:wait, t}
      t = t |> Workers.due("p-1.0", :calls) |> Workers.due("p-2.0", :age)
      t = Workers.due(t, "p-3.0", :rss_mb)
      assert Workers.get(t, "p-2.0").recycle == :age
      assert t.recycle_queue == ["p-1.0", "p-2.0", "p-3.0"]
      assert {:start, "p-1.0", t} = Workers.next_recycle(t)
      # p-1.0's replacement is starting: the others wait
      t = Workers.add(t, "p-1.1", make_ref(), self(), 1, "p-1.0", 0)
      assert {:wait, ^t} = Workers.next_recycle(t)
      # the replacement failed: p-1.0 has its turn first again, unless it is gone or not due
      {_wid, _w, t} = Workers.remove(t, Workers.find_id(t, "p-1.1") |> elem(0))
      assert {:ok, t1} = Workers.recycle_first(t, "p-1.0")
      assert t1.recycle_queue == ["p-1.0", "p-2.0", "p-3.0"]
      assert Workers.recycle_first(t, "nope") == :ignore
      assert Workers.recycle_first(Workers.put(t, "p-1.0", :recycle, nil), "p-1.0") == :ignore
      # gone or retiring meanwhile: skipped
      {:ok, _w, t} = Workers.retiring(t, "p-2.0")
      {_wid, _w, t} = Workers.remove(t, mon3)
      t = %{t | recycle_queue: ["p-2.0", "p-3.0", "p-1.0"]}
      assert {:start, "p-1.0", %{recycle_queue: []}} = Workers.next_recycle(t)
      t = %{t | recycle_queue: ["p-2.0", "p-3.0"]}
      assert {:wait, %{recycle_queue: []}} = Workers.next_recycle(t)
    end

    test "a replacement that fails to start: the error kept, failures counted, none starting" do
      {t, _} = started(1)
      t = Workers.successor_started(t, 1, "p-1.1", 1, {:error, :emfile})

      assert %{gen: 1, successor: nil, last_error: %{worker_id: "p-1.1", reason: :emfile}} =
               t.slots[1]

      t = Workers.successor_started(t, 1, "p-1.2", 2, :ok)
      assert t.slots[1].successor == "p-1.2"
      assert {1, t} = Workers.successor_failed(t, "p-1.0")
      assert {2, t} = Workers.successor_failed(t, "p-1.0")
      assert t.slots[1].successor == nil

      assert Workers.no_successor(Workers.successor_started(t, 1, "x", 3, :ok), 1).slots[1].successor ==
               nil
    end

    test "hand_to_successor: a slot worker gone while its replacement starts" do
      {t, mon} = started(1)
      {_wid, w, t0} = Workers.remove(t, mon)
      assert Workers.hand_to_successor(t0, w) == :none

      t = Workers.successor_started(t, 1, "p-1.1", 1, :ok)
      t = Workers.add(t, "p-1.1", make_ref(), self(), 1, "p-1.0", 300)
      {_wid, w, t} = Workers.remove(t, mon)
      assert {:handed, t} = Workers.hand_to_successor(t, w)
      assert %{worker_id: "p-1.1", successor: nil} = t.slots[1]
      assert Workers.get(t, "p-1.1").successor_of == nil

      {_s, t} = Workers.drop_slot(t, 1)
      assert Workers.hand_to_successor(t, w) == :gone
    end
  end

  test "stats: a row per slot (its worker, or restarting), replacements apart, retiring listed" do
    {t, _} = started(1)
    {t, mon2} = started(t, 2)
    {t, _} = started(t, 3)
    t = Workers.give(t, "p-1.0", make_ref(), 1)
    # slot 2's worker died: restarting
    {_wid, _w, t} = Workers.remove(t, mon2)
    # slot 3's worker is replaced and retires
    t = Workers.successor_started(t, 3, "p-3.1", 1, :ok)
    t = Workers.add(t, "p-3.1", make_ref(), self(), 3, "p-3.0", 0)
    {:ok, _w, t} = Workers.ready(t, "p-3.1", self(), @info, 1, nil)
    {_old, t} = Workers.successor_ready(t, "p-3.1")
    {:ok, _w, t} = Workers.retiring(t, "p-3.0")

    {rows, retiring} = Workers.stats(t, &"ep#{&1}")
    assert [r1, r2, r3] = rows
    assert %{slot: 1, id: "p-1.0", status: :busy, in_flight: 1, endpoint: "ep1", os_pid: 42} = r1
    assert %{slot: 2, id: nil, status: :restarting, in_flight: 0, pid: nil} = r2
    assert %{slot: 3, id: "p-3.1", status: :idle, recycles: 1, replacement: nil} = r3
    assert [%{id: "p-3.0", slot: 3, in_flight: 0}] = retiring

    # a replacement still starting is not its slot's row
    t = Workers.successor_started(t, 1, "p-1.1", 1, :ok)
    t = Workers.add(t, "p-1.1", make_ref(), self(), 1, "p-1.0", 0)
    {[r1 | _], _} = Workers.stats(t, fn _ -> nil end)
    assert %{id: "p-1.0", replacement: "p-1.1", endpoint: nil} = r1
  end

  describe "down/6: a worker's death, per branch" do
    # A slot-1 worker "p-1.0" ready at 200, with a replacement "p-1.1" starting: {t, mon, its mon}.
    defp replacing(t \\ nil) do
      {t, mon} = started(t || Workers.new(), 1)
      smon = make_ref()
      t = Workers.successor_started(t, 1, "p-1.1", 1, :ok)
      t = Workers.add(t, "p-1.1", smon, self(), 1, "p-1.0", 300)
      {t, mon, smon}
    end

    test "a retiring worker is retired: its slot is not touched" do
      {t, mon, _smon} = replacing()
      {:ok, _w, t} = Workers.ready(t, "p-1.1", self(), @info, 400, nil)
      {"p-1.0", t} = Workers.successor_ready(t, "p-1.1")
      {:ok, _w, t} = Workers.retiring(t, "p-1.0")

      assert {"p-1.0", %{status: :retiring}, :retired, t2} =
               Workers.down(t, mon, :normal, [], 1_000, 10_000)

      assert Workers.get(t2, "p-1.0") == nil
      assert t2.slots == t.slots
    end

    test "a replacement that died starting: the old worker serves on, the error is kept" do
      {t, _mon, smon} = replacing()

      assert {"p-1.1", %{successor_of: "p-1.0"}, {:retry_successor, "p-1.0"}, t} =
               Workers.down(t, smon, {:shutdown, :boom}, ["out"], 1_000, 10_000)

      assert %{worker_id: "p-1.0", restarts: 0, failures: 0} = t.slots[1]
      assert t.slots[1].last_error == %{worker_id: "p-1.1", reason: :boom, output: "out"}
      assert Workers.get(t, "p-1.1") == nil
    end

    test "a replacement that died after the worker it replaces: the slot restarts (failed start)" do
      {t, mon, smon} = replacing()
      {_, w, t} = Workers.remove(t, mon)

      # the slot was handed to p-1.1 by the scheduler's own down of p-1.0 otherwise; here it is not
      assert w.status == :idle

      assert {"p-1.1", _w, {:failed, error}, t} = Workers.down(t, smon, :boom, [], 1_000, 10_000)

      assert error == %{worker_id: "p-1.1", reason: :boom, output: ""}
      assert %{successor: nil, failures: 1, restarts: 1, start_failed: true} = t.slots[1]
    end

    test "a slot worker that died while its replacement starts hands the slot over" do
      {t, mon, _smon} = replacing()
      assert {"p-1.0", _w, :handed, t} = Workers.down(t, mon, :killed, [], 1_000, 10_000)
      assert %{worker_id: "p-1.1", successor: nil, restarts: 0} = t.slots[1]
      assert Workers.get(t, "p-1.1").successor_of == nil
    end

    test "a slot worker whose slot left is not restarted" do
      {t, mon} = started(1)
      {_s, t} = Workers.drop_slot(t, 1)
      assert {"p-1.0", _w, :slot_gone, t} = Workers.down(t, mon, :killed, [], 1_000, 10_000)
      assert t.slots == %{}
      assert t.workers == %{}
    end

    test "a ready slot worker that died restarts; one still starting made a failed start" do
      {t, mon} = started(1)
      t = idle(t, "p-1.0")
      assert {"p-1.0", _w, :restart, t1} = Workers.down(t, mon, :killed, [], 1_000, 10_000)
      assert %{failures: 1, restarts: 1, start_failed: false} = t1.slots[1]
      assert t1.idle == []

      {t, mon} = started(Workers.new(), 2, 0, false)

      assert {"p-2.0", %{status: :starting}, {:failed, error}, t} =
               Workers.down(t, mon, {:shutdown, {:exit_status, 1}}, ["a"], 500, 10)

      assert error == %{worker_id: "p-2.0", reason: {:exit_status, 1}, output: "a"}
      assert %{start_failed: true, last_error: ^error} = t.slots[2]
    end
  end
end
