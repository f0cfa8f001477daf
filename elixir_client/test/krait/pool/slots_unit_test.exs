defmodule Krait.Pool.SlotsUnitTest do
  # Krait.Pool.Slots: the worker table's rules as plain data.
  use ExUnit.Case, async: true

  alias Krait.Pool.Slots

  defp worker(opts \\ []) do
    Map.merge(%{status: :idle, leases: [], given: 0, calls: 0, recycle: nil}, Map.new(opts))
  end

  test "pick_idle: none, the only one, the longest idle not due for recycling, or a due one" do
    ws = %{"a" => worker(recycle: :calls), "b" => worker(), "c" => worker(recycle: :age)}
    assert Slots.pick_idle([], ws) == nil
    assert Slots.pick_idle(["a"], ws) == "a"
    assert Slots.pick_idle(["a", "b"], ws) == "b"
    assert Slots.pick_idle(["b", "a"], ws) == "b"
    assert Slots.pick_idle(["a", "c"], ws) == "a"
  end

  test "room? by status and leases" do
    assert Slots.room?(worker(), 1)
    refute Slots.room?(worker(leases: [make_ref()]), 1)
    assert Slots.room?(worker(status: :busy, leases: [make_ref()]), 2)
    refute Slots.room?(worker(status: :starting), 1)
    refute Slots.room?(worker(status: :retiring), 1)
    refute Slots.room?(nil, 1)
  end

  test "give: leases, busy when full, given counts" do
    r1 = make_ref()
    {w, full?} = Slots.give(worker(), r1, 2)
    refute full?
    assert {w.status, w.leases, w.given} == {:idle, [r1], 1}
    r2 = make_ref()
    {w, full?} = Slots.give(w, r2, 2)
    assert full?
    assert {w.status, w.given} == {:busy, 2}
    assert Enum.sort(w.leases) == Enum.sort([r1, r2])
  end

  test "take_back: idle again with a call done; retiring stays retiring; unknown refs" do
    r = make_ref()
    {w, _} = Slots.give(worker(), r, 1)
    assert {:ok, back} = Slots.take_back(w, r, 1)
    assert {back.status, back.leases, back.calls} == {:idle, [], 1}
    assert Slots.take_back(back, r, 1) == :unknown
    assert {:ok, %{status: :retiring, calls: 1}} = Slots.take_back(%{w | status: :retiring}, r, 1)
    assert Slots.take_back(%{status: :starting, leases: nil}, r, 1) == :unknown
  end

  test "take_back: still busy when another lease arrived before this checkin" do
    {r1, r2} = {make_ref(), make_ref()}
    {w, _} = Slots.give(worker(), r1, 1)
    # a caller's claim registered before r1's checkin: two leases on a one-call worker
    {w, true} = Slots.give(w, r2, 1)
    assert {:ok, %{status: :busy, leases: [^r2]}} = Slots.take_back(w, r1, 1)
  end

  test "ready_count counts idle and busy workers" do
    ws = %{
      "a" => worker(),
      "b" => worker(status: :busy),
      "c" => worker(status: :starting),
      "d" => worker(status: :retiring)
    }

    assert Slots.ready_count(ws) == 2
  end

  test "restart_delay doubles from min up to max" do
    assert Slots.restart_delay(0, 100, 1_000) == 100
    assert Slots.restart_delay(1, 100, 1_000) == 100
    assert Slots.restart_delay(2, 100, 1_000) == 200
    assert Slots.restart_delay(3, 100, 1_000) == 400
    assert Slots.restart_delay(5, 100, 1_000) == 1_000
  end

  test "failing? when no worker is up and every slot's last start failed" do
    failed = %{1 => %{start_failed: true}, 2 => %{start_failed: true}}
    assert Slots.failing?(%{}, failed)
    refute Slots.failing?(%{}, %{})
    refute Slots.failing?(%{}, %{failed | 2 => %{start_failed: false}})
    refute Slots.failing?(%{"a" => worker()}, failed)
  end
end
