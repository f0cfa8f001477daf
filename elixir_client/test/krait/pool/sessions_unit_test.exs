defmodule Krait.Pool.SessionsUnitTest do
  # Krait.Pool.Sessions as plain data.
  use ExUnit.Case, async: true

  alias Krait.Pool.Sessions

  test "a session is bound by its first call and keeps its worker" do
    s = Sessions.new()
    refute Sessions.bound?(s, "a")
    assert Sessions.worker(s, "a") == nil
    s = Sessions.touch(s, "a", "w1", 10)
    assert Sessions.bound?(s, "a")
    assert Sessions.worker(s, "a") == "w1"
    s = Sessions.touch(s, "a", "w2", 20)
    assert Sessions.worker(s, "a") == "w1"
    assert s.bound["a"].used == 20
    assert Sessions.size(s) == 1
    # a call without a session changes nothing
    assert Sessions.touch(s, nil, "w2", 30) == s
  end

  test "forget and forget_worker drop bindings" do
    s = Sessions.new() |> Sessions.touch("a", "w1", 0) |> Sessions.touch("b", "w2", 0)
    s = Sessions.touch(s, "c", "w1", 0)
    assert Sessions.forget(s, "a") |> Sessions.worker("a") == nil
    s = Sessions.forget_worker(s, "w1")
    assert Map.keys(s.bound) == ["b"]
  end

  test "remote sessions" do
    s = Sessions.new()
    assert Sessions.remote_node(s, "a") == nil
    s = Sessions.put_remote(s, "a", :other@host, 5)
    assert Sessions.remote_node(s, "a") == :other@host
    refute Sessions.bound?(s, "a")
  end

  test "sweep drops what was unused since the cutoff, except sessions in flight" do
    s =
      Sessions.new()
      |> Sessions.touch("old", "w1", 10)
      |> Sessions.touch("busy", "w1", 10)
      |> Sessions.touch("new", "w2", 100)
      |> Sessions.put_remote("r_old", :n@h, 10)
      |> Sessions.put_remote("r_new", :n@h, 100)

    s = Sessions.sweep(s, 50, MapSet.new(["busy"]))
    assert Enum.sort(Map.keys(s.bound)) == ["busy", "new"]
    assert Map.keys(s.remote) == ["r_new"]
    # the cutoff itself counts as expired
    assert Sessions.sweep(s, 100, MapSet.new()).bound == %{}
  end
end
