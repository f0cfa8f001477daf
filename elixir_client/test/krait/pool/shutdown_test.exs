defmodule Krait.Pool.ShutdownTest do
  # Nothing outlives the pool: workers stop within their grace whatever their tools are doing, and the
  # processes their tools started die with them (each worker is its own process group), including
  # after the BEAM itself is SIGKILLed.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Krait.TestHelpers

  @moduletag timeout: 120_000
  @hostile "tests.fixtures.hostile:HostileAdapter"

  defp busy?(pool, n), do: Krait.Pool.stats(pool).busy == n

  test "stopping the pool stops deaf tools and their children within the grace" do
    name = :"KraitShutdown#{System.unique_integer([:positive])}"

    {:ok, sup} =
      Krait.Pool.start_link(
        pool_opts(name: name, adapter: @hostile, size: 2, shutdown_grace: 1_000)
      )

    :ok = Krait.Pool.await_ready(name, 20_000)
    workers = worker_os_pids(name)

    {:ok, child} = Krait.execute("spawn_child", %{seconds: 60}, pool: name)
    assert os_alive?(child)

    deaf =
      Task.async(fn ->
        Krait.execute("sleep_deaf", %{seconds: 30}, pool: name, timeout: 60_000)
      end)

    assert eventually(fn -> busy?(name, 1) end)

    capture_log(fn ->
      started = System.monotonic_time(:millisecond)
      Process.unlink(sup)
      :ok = Krait.Pool.stop(name)
      # terminate/2 waited: the grace is 1 s, then SIGKILL of the group
      assert System.monotonic_time(:millisecond) - started < 10_000
    end)

    refute Enum.any?(workers, &os_alive?/1)
    assert eventually(fn -> not os_alive?(child) end, 2_000)
    Task.shutdown(deaf, :brutal_kill)
  end

  test "a SIGKILLed worker's tool children are killed with its process group" do
    pool = start_pool!(adapter: @hostile, size: 1)
    [worker] = worker_os_pids(pool)
    {:ok, child} = Krait.execute("spawn_child", %{seconds: 60}, pool: pool)
    # the child is in the worker's process group
    assert pgid(child) == worker

    capture_log(fn ->
      os_kill(worker, "KILL")
      assert eventually(fn -> not os_alive?(child) end)
      assert eventually(fn -> Krait.Pool.stats(pool).ready == 1 end, 20_000)
    end)
  end

  test "after a BEAM SIGKILL, no worker and no tool child is alive 2 s later" do
    {:ok, peer, _node} =
      :peer.start(%{
        connection: :standard_io,
        args: Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
      })

    beam = :peer.call(peer, :os, :getpid, []) |> List.to_integer()
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:logger])
    :ok = :peer.call(peer, Logger, :configure, [[level: :warning]])
    opts = pool_opts(adapter: @hostile, size: 2, name: Krait.Pool)
    :ok = :peer.call(peer, Application, :put_env, [:krait, :pool, opts])
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:krait])
    :ok = :peer.call(peer, Krait.Pool, :await_ready, [Krait.Pool, 20_000])
    workers = :peer.call(peer, Krait.TestHelpers, :worker_os_pids, [Krait.Pool])
    assert length(workers) == 2

    {:ok, child} = :peer.call(peer, Krait, :execute, ["spawn_child", %{seconds: 60}])
    # whatever the outcome, nothing this test started outlives it
    on_exit(fn -> for p <- [beam, child | workers], os_alive?(p), do: os_kill(p) end)
    # a deaf tool on the other worker (its gRPC executor thread keeps Python alive by itself)
    :peer.call(peer, :erlang, :spawn, [
      Krait,
      :execute,
      ["sleep_deaf", %{seconds: 30}, [timeout: 60_000]]
    ])

    assert eventually(fn -> :peer.call(peer, Krait.Pool, :stats, [Krait.Pool]).busy == 1 end)

    os_kill(beam, "KILL")
    killed = System.monotonic_time(:millisecond)
    # the Python workers see their stdin close and stop within their 2 s grace, children included
    assert eventually(fn -> not Enum.any?([child | workers], &os_alive?/1) end, 4_000)
    # (reported, not asserted: timings are the benchmarks' business)
    IO.puts(
      "  everything gone #{System.monotonic_time(:millisecond) - killed} ms after the BEAM's SIGKILL"
    )
  end

  defp pgid(os_pid) do
    [_, rest] = "/proc/#{os_pid}/stat" |> File.read!() |> String.split(") ", parts: 2)
    rest |> String.split(" ") |> Enum.at(2) |> String.to_integer()
  end
end
