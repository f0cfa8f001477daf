defmodule Krait.Pool.ClusterTest do
  # Pools across a BEAM cluster: three nodes started with OTP's :peer (distribution on 127.0.0.1 only,
  # epmd bound to 127.0.0.1 and stopped afterwards if this test started it), each running a one-worker
  # pool named Krait.Pool with `cluster: true`.
  use ExUnit.Case, async: false

  import Krait.TestHelpers

  @moduletag timeout: 120_000

  setup do
    epmd_was_running = epmd_running?()

    peers =
      for name <- [:krait_a, :krait_b, :krait_c] do
        {:ok, peer, node} =
          :peer.start(%{
            name: name,
            host: ~c"127.0.0.1",
            longnames: true,
            connection: :standard_io,
            env: [{~c"ERL_EPMD_ADDRESS", ~c"127.0.0.1"}],
            args:
              [
                ~c"-setcookie",
                ~c"krait_cluster_test",
                ~c"-kernel",
                ~c"inet_dist_use_interface",
                ~c"{127,0,0,1}"
              ] ++ Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
          })

        {peer, node}
      end

    on_exit(fn ->
      for {peer, _} <- peers do
        try do
          :peer.stop(peer)
        catch
          :exit, _ -> :ok
        end
      end

      unless epmd_was_running, do: stop_epmd()
    end)

    opts = pool_opts(size: 1, name: Krait.Pool, cluster: true)

    for {peer, _} <- peers do
      {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:logger])
      :ok = :peer.call(peer, Logger, :configure, [[level: :error]])
      :ok = :peer.call(peer, Application, :put_env, [:krait, :pool, opts])
      {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:krait])
    end

    [{a, _}, {_, node_b}, {_, node_c}] = peers
    true = :peer.call(a, :net_kernel, :connect_node, [node_b])
    true = :peer.call(a, :net_kernel, :connect_node, [node_c])

    for {peer, _} <- peers do
      :ok = :peer.call(peer, Krait.Pool, :await_ready, [Krait.Pool, 30_000], 35_000)

      eventually(
        fn -> length(:peer.call(peer, Krait.Pool.Cluster, :others, [Krait.Pool])) == 2 end,
        10_000
      )
    end

    %{peers: peers}
  end

  defp stats(peer), do: :peer.call(peer, Krait.Pool, :stats, [Krait.Pool])

  # A blocking stream started on `peer` (by a process of its own), holding a worker.
  defp hold(peer) do
    :peer.call(peer, :erlang, :spawn, [
      Krait,
      :execute_stream,
      ["blocking_stream", %{seconds: 30}, &Function.identity/1, []]
    ])
  end

  defp calls(peer), do: Enum.sum(for w <- stats(peer).workers, do: w.calls)

  test "a call without a session, nothing idle on its node, goes to another node without asking its own scheduler",
       %{peers: peers} do
    [{a, _}, {b, _}, {c, _}] = peers
    hold(a)
    eventually(fn -> stats(a).busy == 1 end)
    before = calls(b) + calls(c)

    # A's scheduler cannot answer: the call is served only if the caller does not ask it
    scheduler = :peer.call(a, Process, :whereis, [Krait.Pool])
    :ok = :peer.call(a, :sys, :suspend, [scheduler])

    try do
      assert {:ok, 3.0} =
               :peer.call(a, Krait, :execute, ["add", %{a: 1, b: 2}, [timeout: 1_000]], 15_000)
    after
      :peer.call(a, :sys, :resume, [scheduler])
    end

    eventually(fn -> calls(b) + calls(c) == before + 1 end)
    assert stats(a).queue_length == 0
  end

  # Counts the calls of Krait.Call.Elsewhere.serve/6 on `peer` (the other node's end of a unary call
  # run whole there), from now on.
  defp count_serves(peer) do
    sink = :peer.call(peer, :erlang, :spawn, [:timer, :sleep, [:infinity]])
    mfa = {Krait.Call.Elsewhere, :serve, 6}
    {:module, _} = :peer.call(peer, Code, :ensure_loaded, [Krait.Call.Elsewhere])
    1 = :peer.call(peer, :erlang, :trace_pattern, [mfa, true, [:call_count]])
    :peer.call(peer, :erlang, :trace, [:new_processes, true, [:call, {:tracer, sink}]])
    fn -> elem(:peer.call(peer, :erlang, :trace_info, [mfa, :call_count]), 1) end
  end

  test "a unary call that overflows runs whole on the other node: one request there, its result back",
       %{peers: peers} do
    [{a, _}, {b, _}, {c, _}] = peers
    [served_b, served_c] = [count_serves(b), count_serves(c)]
    served = fn -> served_b.() + served_c.() end
    busy_elsewhere = fn -> stats(b).busy + stats(c).busy end
    holder_a = hold(a)
    eventually(fn -> stats(a).busy == 1 end)

    for i <- 1..5 do
      assert {:ok, sum} =
               :peer.call(a, Krait, :execute, ["add", %{a: i, b: 1}, [timeout: 10_000]])

      assert sum == i + 1.0
    end

    assert served.() == 5
    assert stats(a).queue_length == 0

    # errors come back as they would from a local worker: the tool's, and the deadline's
    assert {:error, %Krait.Error{category: :invalid_argument}} =
             :peer.call(a, Krait, :execute, ["add", %{a: "x", b: 1}, [timeout: 10_000]])

    assert {:error, %Krait.Error{category: :timeout}} =
             :peer.call(a, Krait, :execute, ["slow_tool", %{seconds: 5}, [timeout: 300]])

    # the timed-out call does not keep the other node's worker
    eventually(fn -> busy_elsewhere.() == 0 end)

    # a caller on A killed mid-call frees the other node's worker (its call is cancelled there)
    caller =
      :peer.call(a, :erlang, :spawn, [
        Krait,
        :execute,
        ["slow_tool", %{seconds: 30}, [timeout: 60_000]]
      ])

    eventually(fn -> busy_elsewhere.() == 1 end)
    true = :peer.call(a, Process, :exit, [caller, :kill])
    eventually(fn -> busy_elsewhere.() == 0 end)

    # every node's worker taken: both other nodes decline (nothing queues there), the call waits in
    # A's queue and runs on A's worker once it is free
    holders = [hold(b), hold(c)]
    eventually(fn -> stats(b).busy == 1 and stats(c).busy == 1 end)
    asked = served.()

    waiting =
      Task.async(fn ->
        :peer.call(a, Krait, :execute, ["add", %{a: 2, b: 2}, [timeout: 20_000]], 30_000)
      end)

    eventually(fn -> stats(a).queue_length == 1 end)
    assert served.() == asked + 2
    assert stats(b).queue_length + stats(c).queue_length == 0
    true = :peer.call(a, Process, :exit, [holder_a, :kill])
    assert {:ok, 4.0} = Task.await(waiting, 30_000)

    # the node running a call goes down: the caller gets :worker, at once
    hold(a)

    for {holder, peer} <- Enum.zip(holders, [b, c]),
        do: :peer.call(peer, Process, :exit, [holder, :kill])

    eventually(fn -> stats(a).busy == 1 and busy_elsewhere.() == 0 end)

    running =
      Task.async(fn ->
        :peer.call(a, Krait, :execute, ["slow_tool", %{seconds: 30}, [timeout: 60_000]], 90_000)
      end)

    victim = eventually(fn -> Enum.find([b, c], &(stats(&1).busy == 1)) end)
    os_kill(:peer.call(victim, :os, :getpid, []) |> List.to_integer(), "KILL")
    assert {:error, %Krait.Error{category: :worker}} = Task.await(running, 5_000)
  end

  test "calls overflow to other nodes; a node that goes down fails its calls with :worker", %{
    peers: peers
  } do
    [{a, _}, {b, _}, {c, _}] = peers

    # node A's only worker is busy: A's next call runs on B's or C's idle worker, not in A's queue
    hold(a)
    eventually(fn -> stats(a).busy == 1 end)
    before = calls(b) + calls(c)
    assert {:ok, 3.0} = :peer.call(a, Krait, :execute, ["add", %{a: 1, b: 2}, [timeout: 10_000]])
    assert stats(a).queue_length == 0
    eventually(fn -> calls(b) + calls(c) == before + 1 end)

    # so does a session's :strict_fail_fast first call: "busy" means every worker of the cluster, not A's
    assert {:ok, %{"count" => 1, "session_id" => "s-fast"}} =
             :peer.call(a, Krait, :execute, [
               "session_counter",
               %{},
               [session_id: "s-fast", affinity: :strict_fail_fast, timeout: 10_000]
             ])

    # Krait.stream/3 from A runs on another node: the chunks in order, then the final one
    stream = Krait.stream("stream_numbers", %{count: 50}, [])

    numbers =
      for chunk <- :peer.call(a, Enum, :to_list, [stream]),
          chunk.data != nil,
          do: chunk.data["number"]

    assert numbers == Enum.to_list(0..49)

    # a caller on A that dies mid-stream frees the other node's worker (its call is cancelled there)
    caller = hold(a)
    eventually(fn -> stats(b).busy + stats(c).busy == 1 end)
    true = :peer.call(a, Process, :exit, [caller, :kill])
    eventually(fn -> stats(b).busy + stats(c).busy == 0 end)

    # a stream from A lands on another node; that node goes down mid-stream: the caller gets :worker
    test = self()

    streaming =
      Task.async(fn ->
        :peer.call(
          a,
          Krait,
          :execute_stream,
          ["blocking_stream", %{seconds: 30}, &Function.identity/1, [timeout: 60_000]],
          90_000
        )
        |> tap(fn _ -> send(test, :stream_ended) end)
      end)

    {victim, survivor} =
      eventually(fn ->
        cond do
          stats(b).busy == 1 -> {b, c}
          stats(c).busy == 1 -> {c, b}
          true -> nil
        end
      end)

    # the node dies (SIGKILL of its BEAM): its connection to A closes, A's monitors fire
    os_kill(:peer.call(victim, :os, :getpid, []) |> List.to_integer(), "KILL")
    assert {:error, %Krait.Error{category: :worker}} = Task.await(streaming, 5_000)
    assert_received :stream_ended

    # the rest of the cluster keeps serving A's calls
    assert {:ok, 5.0} = :peer.call(a, Krait, :execute, ["add", %{a: 2, b: 3}, [timeout: 10_000]])
    assert stats(survivor).ready == 1
  end

  test "a session bound to a worker on another node is served there, from any node", %{
    peers: peers
  } do
    [{a, _}, {b, node_b}, {c, node_c}] = peers

    count = fn peer, opts ->
      :peer.call(peer, Krait, :execute, [
        "session_counter",
        %{},
        [session_id: "s1", timeout: 10_000] ++ opts
      ])
    end

    # A is busy: the session's first call runs on B's or C's worker, and is bound there
    holder = hold(a)
    eventually(fn -> stats(a).busy == 1 end)
    assert {:ok, %{"count" => 1, "worker_id" => wid}} = count.(a, [])

    true = :peer.call(a, Process, :exit, [holder, :kill])
    eventually(fn -> stats(a).busy == 0 end)

    # A has an idle worker now, yet the session goes to its worker on the other node
    assert {:ok, %{"count" => 2, "worker_id" => ^wid}} = count.(a, [])
    assert {:ok, %{"count" => 3, "worker_id" => ^wid}} = count.(b, [])
    assert {:ok, %{"count" => 4, "worker_id" => ^wid}} = count.(c, [])

    # strict affinity keeps its meaning across nodes: the session's worker busy, fail fast
    home =
      if Enum.any?(stats(b).workers, &(&1.id == wid and &1.calls >= 1)) and
           stats(b).sessions == 1,
         do: b,
         else: c

    _ = {node_b, node_c}
    hold(home)
    eventually(fn -> stats(home).busy == 1 end)

    assert {:error, %Krait.Error{category: :pool, details: %{reason: :worker_busy}}} =
             count.(a, affinity: :strict_fail_fast)

    # the session's node dies: to A that is its worker dying
    os_kill(:peer.call(home, :os, :getpid, []) |> List.to_integer(), "KILL")
    eventually(fn -> length(:peer.call(a, Node, :list, [])) == 1 end)

    assert {:error,
            %Krait.Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
             count.(a, affinity: :strict_queue)

    assert {:ok, %{"count" => 1}} = count.(a, affinity: :hint)
  end

  test "nodes advertise idle workers; a call that overflows asks an advertising node first", %{
    peers: peers
  } do
    [{a, _}, {b, node_b}, {c, node_c}] = peers
    scheduler = fn peer -> :peer.call(peer, Process, :whereis, [Krait.Pool]) end
    [pid_b, pid_c] = [scheduler.(b), scheduler.(c)]

    advertised = fn ->
      :peer.call(a, :pg, :get_members, [Krait.Pool.Cluster, {Krait.Pool, Krait.Pool, :idle}])
    end

    # every node's worker is idle: all three advertise
    eventually(fn -> length(advertised.()) == 3 end, 10_000)

    # B's worker busy: B stops advertising, and A asks C first
    hold(b)
    eventually(fn -> stats(b).busy == 1 end)
    eventually(fn -> pid_b not in advertised.() end)
    assert :peer.call(a, Krait.Pool.Cluster, :by_idle, [Krait.Pool]) == [pid_c, pid_b]

    # A's worker busy too: its call runs on C, the one node advertising
    hold(a)
    eventually(fn -> stats(a).busy == 1 end)
    before = calls(c)
    assert {:ok, 3.0} = :peer.call(a, Krait, :execute, ["add", %{a: 1, b: 2}, [timeout: 10_000]])
    eventually(fn -> calls(c) == before + 1 end)

    # C free again after that call: still (or again) advertised; B joins again once free
    eventually(fn -> pid_c in advertised.() end)
    _ = {node_b, node_c}
  end
end
