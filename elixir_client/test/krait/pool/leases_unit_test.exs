defmodule Krait.Pool.LeasesUnitTest do
  # Krait.Pool.Leases as plain data (references stand in for monitors and timers).
  use ExUnit.Case, async: true

  alias Krait.Pool.Leases

  test "a scheduler-made lease is keyed by its caller's monitor" do
    ref = make_ref()
    t = Leases.put(Leases.new(), ref, %{worker_id: "w", session: "s", timer: nil, mon: ref})
    assert t.mons == %{}
    assert Leases.ref_of(t, ref) == ref
    assert %{worker_id: "w"} = Leases.get(t, ref)
    assert Leases.sessions(t) == MapSet.new(["s"])
    assert {%{worker_id: "w"}, t} = Leases.delete(t, ref)
    assert t == Leases.new()
    assert {nil, ^t} = Leases.delete(t, ref)
  end

  test "a claimed lease's caller monitor maps to its lease until the lease ends" do
    {ref, mon, other} = {make_ref(), make_ref(), make_ref()}
    t = Leases.put(Leases.new(), ref, %{worker_id: "w", session: nil, timer: nil, mon: mon})
    assert Leases.ref_of(t, mon) == ref
    # any other monitor (a waiter, a worker) is looked up as itself
    assert Leases.ref_of(t, other) == other
    assert Leases.get(t, other) == nil
    {_lease, t} = Leases.delete(t, ref)
    assert Leases.ref_of(t, mon) == mon
    assert t.mons == %{}
  end
end
