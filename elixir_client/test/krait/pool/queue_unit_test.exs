defmodule Krait.Pool.QueueUnitTest do
  # Krait.Pool.Queue as plain data: no processes, no workers.
  use ExUnit.Case, async: true

  alias Krait.Pool.Queue
  alias Krait.Pool.Queue.Waiter

  defp waiter(queue \\ :any, opts \\ []) do
    %Waiter{
      ref: make_ref(),
      from: nil,
      session: opts[:session],
      affinity: opts[:affinity] || :hint,
      deadline: :infinity,
      queue: queue
    }
  end

  defp push_all(q, waiters) do
    Enum.map_reduce(waiters, q, fn w, acc -> Queue.push(acc, w) end)
  end

  test "a new queue is empty" do
    q = Queue.new()
    assert Queue.size(q) == 0
    assert Queue.general_empty?(q)
    assert Queue.take_next(q, "w1") == :empty
    assert Queue.waiters(q) == []
  end

  test "push numbers arrivals and the general queue is first in, first out" do
    {[a, b, c], q} = push_all(Queue.new(), [waiter(), waiter(), waiter()])
    assert {a.seq, b.seq, c.seq} == {0, 1, 2}
    assert Queue.size(q) == 3
    refute Queue.general_empty?(q)
    assert Queue.get(q, b.ref) == b

    {first, q} = Queue.take_next(q, "w1")
    {second, q} = Queue.take_next(q, "w2")
    {third, q} = Queue.take_next(q, "w1")
    assert [first.ref, second.ref, third.ref] == [a.ref, b.ref, c.ref]
    assert Queue.take_next(q, "w1") == :empty
    assert Queue.size(q) == 0
    assert Queue.get(q, a.ref) == nil
  end

  test "a worker takes the oldest of its own queue and the general queue together" do
    {[g1, o1, g2, o2], q} =
      push_all(Queue.new(), [waiter(), waiter("w1"), waiter(), waiter("w1")])

    # another worker never takes w1's own waiters
    {x, q2} = Queue.take_next(q, "w2")
    assert x.ref == g1.ref
    {y, q2} = Queue.take_next(q2, "w2")
    assert y.ref == g2.ref
    assert Queue.take_next(q2, "w2") == :empty
    assert Queue.size(q2) == 2

    refs =
      Enum.map_reduce(1..4, q, fn _, acc ->
        {w, acc} = Queue.take_next(acc, "w1")
        {w.ref, acc}
      end)
      |> elem(0)

    assert refs == [g1.ref, o1.ref, g2.ref, o2.ref]
  end

  test "a worker's own queue alone, and its waiter older than the general queue's" do
    {[o1, _g1], q} = push_all(Queue.new(), [waiter("w1"), waiter()])
    {w, q} = Queue.take_next(q, "w1")
    assert w.ref == o1.ref
    assert q.own == %{}
  end

  test "delete removes a waiter by ref from whichever queue it is in" do
    {[g, o, o2], q} = push_all(Queue.new(), [waiter(), waiter("w1"), waiter("w1")])
    {dg, q} = Queue.delete(q, g.ref)
    assert dg.ref == g.ref
    assert Queue.general_empty?(q)
    {do1, q} = Queue.delete(q, o.ref)
    assert do1.ref == o.ref
    assert Map.has_key?(q.own, "w1")
    {_, q} = Queue.delete(q, o2.ref)
    # an emptied own queue goes
    assert q.own == %{}
    assert Queue.size(q) == 0
    # unknown ref: nothing changes
    assert {nil, ^q} = Queue.delete(q, make_ref())
  end

  test "delete of a waiter whose own queue is already gone" do
    {[o], q} = push_all(Queue.new(), [waiter("w1")])
    # a stale entry: the waiter is known but its worker's queue was dropped
    q = %{q | own: %{}}
    assert {%Waiter{}, q} = Queue.delete(q, o.ref)
    assert Queue.size(q) == 0
  end

  test "insert moves a waiter between queues keeping its arrival number" do
    {[a, b], q} = push_all(Queue.new(), [waiter(), waiter()])
    {taken, q} = Queue.take_next(q, "w1")
    assert taken.ref == a.ref
    q = Queue.insert(q, %{taken | queue: "w2"})
    # a waits for w2 now, still older than b
    {w, _} = Queue.take_next(q, "w2")
    assert w.ref == a.ref
    {w, _} = Queue.take_next(q, "w3")
    assert w.ref == b.ref
  end

  test "take_own hands over a worker's own waiters, oldest first" do
    {[o1, g, o2], q} = push_all(Queue.new(), [waiter("w1"), waiter(), waiter("w1")])
    {taken, q} = Queue.take_own(q, "w1")
    assert Enum.map(taken, & &1.ref) == [o1.ref, o2.ref]
    assert Queue.size(q) == 1
    assert Queue.get(q, g.ref) != nil
    assert Queue.take_own(q, "w1") == {[], q}
  end

  test "take_all empties the queue and keeps counting arrivals" do
    {_, q} = push_all(Queue.new(), [waiter(), waiter("w1")])
    {all, q} = Queue.take_all(q)
    assert length(all) == 2
    assert Queue.size(q) == 0
    assert q.own == %{}
    {w, _} = Queue.push(q, waiter())
    assert w.seq == 2
  end

  describe "admit/4" do
    test "a caller may wait while the queue has room and its deadline is ahead" do
      assert Queue.admit(Queue.new(), 1, :infinity, 0) == :ok
      assert Queue.admit(Queue.new(), 1, 101, 100) == :ok
    end

    test "a full queue answers :pool_saturated, before the deadline is looked at" do
      {_, q} = Queue.push(Queue.new(), waiter())
      assert Queue.admit(q, 1, :infinity, 0) == {:error, :pool_saturated}
      assert Queue.admit(q, 1, 50, 100) == {:error, :pool_saturated}
      assert Queue.admit(q, 2, :infinity, 0) == :ok
      assert Queue.admit(Queue.new(), 0, :infinity, 0) == {:error, :pool_saturated}
    end

    test "a deadline that has come answers :queue_timeout" do
      assert Queue.admit(Queue.new(), 10, 100, 100) == {:error, :queue_timeout}
      assert Queue.admit(Queue.new(), 10, 99, 100) == {:error, :queue_timeout}
    end
  end
end
