defmodule Krait.Pool.CellsUnitTest do
  # Krait.Pool.Cells without a scheduler: the test process plays the scheduler, and spawned
  # processes the callers.
  use ExUnit.Case, async: true

  alias Krait.Pool.Cells

  defp cells(size \\ 2) do
    Cells.new(:"cells_#{System.unique_integer([:positive])}", size)
  end

  defp worker(wid), do: {wid, self(), self(), Krait.Link}

  defp state(t, index), do: t.cells |> :atomics.get(index) |> Cells.decode() |> elem(2)

  test "encode/decode round trip, the counter wraps at 32 bits" do
    for st <- [:off, :idle, :claimed, :leased] do
      assert Cells.decode(Cells.encode(7, 42, st)) == {7, 42, st}
    end

    assert Cells.decode(Cells.encode(3, 0x1_0000_0001, :idle)) == {3, 1, :idle}
  end

  test "lookup: the published cells while the scheduler lives, nil otherwise" do
    name = :"cells_lookup_#{System.unique_integer([:positive])}"
    t = Cells.new(name, 1)
    assert Cells.lookup(name) == t
    assert Cells.lookup(self()) == nil
    assert Cells.lookup(:no_such_pool_here) == nil
    Cells.unpublish(name)
    assert Cells.lookup(name) == nil

    # published by a process that is gone
    task = Task.async(fn -> Cells.new(name, 1) end)
    Task.await(task)
    assert Cells.lookup(name) == nil
  end

  test "nothing to claim until a published worker is offered" do
    t = cells()
    assert Cells.claim(t, make_ref(), :infinity) == :none
    :ok = Cells.publish(t, 1, 1, worker("w1"))
    assert state(t, 1) == :off
    assert Cells.claim(t, make_ref(), :infinity) == :none
    Cells.offer(t, 1)
    ref = make_ref()
    assert {:ok, {1, 1, 1}, {"w1", _, _, Krait.Link}} = Cells.claim(t, ref, 123)
    assert state(t, 1) == :claimed
    # taken: no second claim
    assert Cells.claim(t, make_ref(), :infinity) == :none
    # the scheduler takes the claim over exactly once
    me = self()
    assert Cells.take_claim(t, 1, 1, 1) == {me, ref, 123}
    assert Cells.take_claim(t, 1, 1, 1) == nil
    # only the claim's own generation and counter
    Cells.claimed_to_leased(t, 1, 1, 2)
    assert state(t, 1) == :claimed
    Cells.claimed_to_leased(t, 1, 1, 1)
    assert state(t, 1) == :leased
    # offered again: the counter goes on
    Cells.offer(t, 1)
    assert {:ok, {1, 1, 2}, _} = Cells.claim(t, make_ref(), :infinity)
  end

  test "offer leaves a claimed or idle cell alone" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    Cells.offer(t, 1)
    assert state(t, 1) == :idle
    {:ok, _, _} = Cells.claim(t, make_ref(), :infinity)
    Cells.offer(t, 1)
    assert state(t, 1) == :claimed
  end

  test "the scheduler's take: a new counter each time, or a caller's claim" do
    t = cells(1)
    Cells.publish(t, 1, 5, worker("w1"))
    # not offered yet (handed straight to a waiter): taken all the same
    assert Cells.take(t, 1) == {:ok, 1}
    assert state(t, 1) == :leased
    # handed from one lease to the next: the counter moves on
    assert Cells.take(t, 1) == {:ok, 2}
    Cells.offer(t, 1)
    assert Cells.take(t, 1) == {:ok, 3}
    assert Cells.claim(t, make_ref(), :infinity) == :none
    Cells.offer(t, 1)
    {:ok, claim, _} = Cells.claim(t, make_ref(), :infinity)
    assert Cells.take(t, 1) == {:claimed, claim}
    # claimed_to_leased only for the cell's own generation
    {1, 5, c} = claim
    Cells.claimed_to_leased(t, 1, 4, c)
    assert state(t, 1) == :claimed
  end

  test "give_back of a claim the scheduler has not read yet; withdraw clears such claims" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    {:ok, {1, 1, c} = claim, _} = Cells.claim(t, make_ref(), :infinity)
    Cells.give_back(t, claim)
    assert state(t, 1) == :idle
    # the scheduler reads the claim later: the cell stays offered
    assert {_, _, _} = Cells.take_claim(t, 1, 1, c)
    Cells.claimed_to_leased(t, 1, 1, c)
    assert state(t, 1) == :idle
    # a second claim, given back, its cast not read when the worker goes
    {:ok, claim2, _} = Cells.claim(t, make_ref(), :infinity)
    Cells.give_back(t, claim2)
    assert Cells.withdraw(t, 1) == :ok
    assert :ets.tab2list(t.table) == []
  end

  test "give_back: the lease's holder offers its worker at once when nobody waits" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    {:ok, c} = Cells.take(t, 1)
    Cells.give_back(t, {1, 1, c})
    assert state(t, 1) == :idle
    # a stale lease (taken back and given to another since) changes nothing
    {:ok, c2} = Cells.take(t, 1)
    Cells.give_back(t, {1, 1, c})
    assert state(t, 1) == :leased
    # someone waits: the scheduler hands the worker on; no claim either
    Cells.set_waiting(t, 1)
    assert Cells.waiting(t) == 1
    Cells.give_back(t, {1, 1, c2})
    assert state(t, 1) == :leased
    Cells.offer(t, 1)
    assert Cells.claim(t, make_ref(), :infinity) == :none
    Cells.set_waiting(t, 0)
    assert {:ok, _, _} = Cells.claim(t, make_ref(), :infinity)
    # the table gone: nothing happens
    :ets.delete(t.table)
    assert Cells.give_back(%{t | cells: :atomics.new(1, [])}, {1, 1, 0}) == :ok
  end

  test "withdraw: a claim made just before comes back; the row goes" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    assert Cells.withdraw(t, 1) == :ok
    Cells.publish(t, 1, 2, worker("w2"))
    Cells.offer(t, 1)
    ref = make_ref()
    {:ok, claim, {"w2", _, _, _}} = Cells.claim(t, ref, 7)
    assert Cells.withdraw(t, 1) == {:claimed, claim, {self(), ref, 7}}
    assert :ets.lookup(t.table, 1) == []
    assert :ets.tab2list(t.table) == []
    assert state(t, 1) == :off
  end

  test "a claim whose cell is withdrawn before the caller reads the worker: :withdrawn" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    # the worker's row is gone but the cell still offered: as if withdrawn between swap and read
    :ets.delete(t.table, 1)
    assert {:withdrawn, {1, 1, 1}} = Cells.claim(t, make_ref(), :infinity)
  end

  test "a claim row left by a caller killed before its swap does not block the cell for good" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    dead = spawn(fn -> :ok end)
    ref = Process.monitor(dead)
    assert_receive {:DOWN, ^ref, _, _, _}
    :ets.insert(t.table, {{:claim, 1, 1, 1}, dead, make_ref(), :infinity})
    # the cell still holds what it held before that caller's swap: its row is cleared and the
    # claim goes through
    assert {:ok, {1, 1, 1}, _} = Cells.claim(t, make_ref(), :infinity)
    assert [{_, pid, _, _}] = :ets.lookup(t.table, {:claim, 1, 1, 1})
    assert pid == self()
  end

  test "a claim row left by a caller killed after its swap stays for the scheduler to adopt" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    seen = :atomics.get(t.cells, 1)
    parent = self()
    ref = make_ref()

    claimer = spawn(fn -> send(parent, {:claimed, Cells.claim(t, ref, :infinity)}) end)

    mon = Process.monitor(claimer)
    assert_receive {:claimed, {:ok, {1, 1, 1} = claim, _}}
    assert_receive {:DOWN, ^mon, _, _, _}

    # a caller that read the cell before that swap finds the dead claimer's row: the claim is real
    assert Cells.claim_seen(t, 1, seen, make_ref(), :infinity) == :lost
    assert Cells.take_claim(t, 1, 1, 1) == {claimer, ref, :infinity}
    assert Cells.take(t, 1) == {:claimed, claim}
  end

  test "a live racer's claim row: this caller passes the cell" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    :ets.insert(t.table, {{:claim, 1, 1, 1}, self(), make_ref(), :infinity})
    assert Cells.claim(t, make_ref(), :infinity) == :none
    assert state(t, 1) == :idle
  end

  test "the table gone with its scheduler: :none" do
    t = cells(1)
    Cells.publish(t, 1, 1, worker("w1"))
    Cells.offer(t, 1)
    :ets.delete(t.table)
    assert Cells.claim(t, make_ref(), :infinity) == :none
  end

  test "many concurrent callers: each offered cell goes to exactly one" do
    t = cells(4)
    for i <- 1..4, do: Cells.publish(t, i, i, worker("w#{i}"))

    for _round <- 1..50 do
      for i <- 1..4, do: Cells.offer(t, i)
      parent = self()

      pids =
        for _ <- 1..16 do
          spawn(fn ->
            receive do
              :go -> send(parent, {:result, Cells.claim(t, make_ref(), :infinity)})
            end
          end)
        end

      Enum.each(pids, &send(&1, :go))
      results = for _ <- pids, do: receive(do: ({:result, r} -> r))
      won = for {:ok, {i, _, _}, _} <- results, do: i
      assert Enum.sort(won) == [1, 2, 3, 4]
      assert Enum.count(results, &(&1 == :none)) == 12

      for i <- 1..4 do
        {_, c, :claimed} = Cells.decode(:atomics.get(t.cells, i))
        assert {_, _, _} = Cells.take_claim(t, i, i, c)
        Cells.claimed_to_leased(t, i, i, c)
      end
    end
  end
end
