defmodule Krait.Pool.LifecycleTest do
  # Workers dying, hanging and being replaced; callers dying mid-call; Python processes never
  # outliving their pool or the BEAM. Real workers, real signals.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000

  defp events(pool, tag) do
    {:ok, events} = Krait.execute("stream_events", %{tag: tag}, pool: pool)
    events
  end

  # Starts a call in a task whose callback reports each chunk; returns the task once the first
  # chunk has arrived.
  defp streaming_task(pool, tool, args, opts \\ []) do
    test = self()

    task =
      Task.async(fn ->
        Krait.execute_stream(
          tool,
          args,
          fn chunk -> send(test, {:chunk, chunk}) end,
          [pool: pool] ++ opts
        )
      end)

    assert_receive {:chunk, _}, 5_000
    task
  end

  # The one-worker pool runs a new Python process, ready.
  defp replaced?(pool, old_os_pid) do
    case Krait.Pool.stats(pool) do
      %{ready: 1, workers: [%{os_pid: p}]} -> p != old_os_pid
      _ -> false
    end
  end

  defp busy_worker(pool), do: Enum.find(Krait.Pool.stats(pool).workers, &(&1.status == :busy))

  # The call's deadline is far off (a minute): a worker back within the 5 s these tests wait came
  # back because its caller died, not because the lease expired or the tool ended. (How fast: the
  # benchmarks.)
  @far 60_000

  # The pool's one worker, idle again: the same worker (not a replacement) with no lease held.
  defp back?(pool, worker_id) do
    match?(
      %{idle: 1, busy: 0, queue_length: 0, workers: [%{id: ^worker_id, restarts: 0}]},
      Krait.Pool.stats(pool)
    )
  end

  describe "a caller killed mid-call" do
    test "streaming: the call is cancelled on the worker, which the pool takes back at once" do
      pool = start_pool!(size: 1)
      [%{id: worker_id}] = Krait.Pool.stats(pool).workers
      tag = tag()
      task = streaming_task(pool, "endless_stream", %{interval_ms: 10, tag: tag}, timeout: @far)
      assert %{busy: 1} = Krait.Pool.stats(pool)

      Task.shutdown(task, :brutal_kill)
      assert eventually(fn -> back?(pool, worker_id) end)

      # the stream stopped on the worker (its finally ran) and the worker serves the next call
      assert eventually(fn -> events(pool, tag)["finally"] end)
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
      assert back?(pool, worker_id)
    end

    test "unary: the tool sees the cancellation and the worker serves the next call" do
      pool = start_pool!(size: 1)
      [%{id: worker_id}] = Krait.Pool.stats(pool).workers
      tag = tag()

      task =
        Task.async(fn ->
          Krait.execute("slow_tool", %{seconds: 30, tag: tag}, pool: pool, timeout: @far)
        end)

      # the tool is running before its caller dies
      assert eventually(fn -> worker_events(pool, worker_id, tag)["started"] end)

      Task.shutdown(task, :brutal_kill)
      # back long before the 30 s tool would have ended by itself
      assert eventually(fn -> back?(pool, worker_id) end)

      assert eventually(fn -> worker_events(pool, worker_id, tag)["cancel_seen"] end)
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
      assert back?(pool, worker_id)
    end
  end

  test "a callback that blocks past the deadline: the pool takes the worker back, the caller gets :timeout" do
    pool = start_pool!(size: 1, lease_grace: 200)
    test = self()

    blocked =
      Task.async(fn ->
        Krait.execute_stream(
          "endless_stream",
          %{interval_ms: 10},
          fn _ ->
            # the first chunk's callback blocks until the test lets it go (at most 30 s)
            unless Process.put(:blocked, true) do
              send(test, {:blocking, self()})

              receive do
                :go -> :ok
              after
                30_000 -> :ok
              end
            end
          end,
          pool: pool,
          timeout: 300
        )
      end)

    assert_receive {:blocking, caller}, 5_000

    # served once the worker is reclaimed (deadline + lease_grace), while the callback still blocks
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
    assert Process.alive?(caller) and Task.yield(blocked, 0) == nil
    send(caller, :go)
    assert {:error, %Error{category: :timeout}} = Task.await(blocked, 10_000)
  end

  test "a worker killed with SIGKILL mid-stream: the caller gets :worker, the worker is replaced" do
    pool = start_pool!(size: 2)
    task = streaming_task(pool, "endless_stream", %{interval_ms: 10}, timeout: @far)
    %{os_pid: os_pid, slot: slot} = busy_worker(pool)

    log =
      capture_log(fn ->
        os_kill(os_pid, "KILL")
        # the death ends the call (a :worker error, well before its deadline: not a :timeout)
        assert {:error, %Error{category: :worker}} = Task.await(task, 10_000)

        assert eventually(fn ->
                 stats = Krait.Pool.stats(pool)
                 worker = Enum.find(stats.workers, &(&1.slot == slot))
                 stats.ready == 2 and worker.restarts == 1 and worker.os_pid != os_pid
               end)
      end)

    assert log =~ "-#{slot}.0 exited"
    refute os_alive?(os_pid)
    assert :ok = Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> :ok end, pool: pool)
  end

  test "a hung worker (SIGSTOP) fails its health checks, is killed and replaced" do
    pool = start_pool!(size: 1, health_interval: 100, health_timeout: 500, health_failures: 2)
    [os_pid] = worker_os_pids(pool)
    task = streaming_task(pool, "endless_stream", %{interval_ms: 10})

    log =
      capture_log(fn ->
        os_kill(os_pid, "STOP")
        assert {:error, %Error{category: :worker}} = Task.await(task, 5_000)
        assert eventually(fn -> not os_alive?(os_pid) end)
        assert eventually(fn -> replaced?(pool, os_pid) end)
      end)

    assert log =~ "unresponsive"
    assert {:ok, 2.0} = Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 5_000)
  end

  test "Python exits by itself when its Port closes (as when the BEAM dies)" do
    pool = start_pool!(size: 1)
    [%{pid: worker, os_pid: os_pid}] = Krait.Pool.stats(pool).workers

    capture_log(fn ->
      # :kill skips terminate/2: nothing signals Python, only its stdin closes.
      Process.exit(worker, :kill)
      assert eventually(fn -> not os_alive?(os_pid) end, 5_000)
      assert eventually(fn -> replaced?(pool, os_pid) end)
    end)
  end

  @tag timeout: 90_000
  test "Python workers exit when the BEAM running them is killed" do
    # this build's ebin (MIX_BUILD_PATH moves it out of _build/)
    ebin = Mix.Project.compile_path()

    script = """
    {:ok, _} = Application.ensure_all_started(:krait)
    opts = [adapter: "adapters.showcase:ShowcaseAdapter", size: 2, python: "#{python()}", cwd: "#{root()}"]
    {:ok, _} = Krait.Pool.start_link(opts)
    :ok = Krait.Pool.await_ready(Krait.Pool, 20_000)
    pids = Enum.map(Krait.Pool.stats().workers, & &1.os_pid)
    IO.puts("PIDS " <> Enum.join([System.pid() | pids], " "))
    Process.sleep(:infinity)
    """

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 1024},
        args: ["-pa", ebin, "-e", script]
      ])

    [beam | workers] = read_pids(port)
    assert length(workers) == 2 and Enum.all?(workers, &os_alive?/1)
    os_kill(beam, "KILL")
    assert eventually(fn -> not Enum.any?(workers, &os_alive?/1) end, 5_000)
  end

  defp read_pids(port) do
    receive do
      {^port, {:data, {:eol, "PIDS " <> pids}}} ->
        pids |> String.split() |> Enum.map(&String.to_integer/1)

      {^port, {:data, _}} ->
        read_pids(port)

      {^port, {:exit_status, status}} ->
        flunk("the child BEAM exited with #{status}")
    after
      30_000 -> flunk("the child BEAM did not start its pool")
    end
  end

  test "stopping a pool stops its Python processes" do
    name = :"KraitStopTest#{System.unique_integer([:positive])}"
    {:ok, _} = Krait.Pool.start_link(pool_opts(name: name, size: 2))
    :ok = Krait.Pool.await_ready(name, 20_000)
    os_pids = worker_os_pids(name)
    assert length(os_pids) == 2
    :ok = Krait.Pool.stop(name)
    # terminate/2 waited for each process to exit
    refute Enum.any?(os_pids, &os_alive?/1)
  end

  test "pool options are checked at start, with absolute paths in errors" do
    assert {:error, %Error{category: :invalid_argument, message: message}} =
             Krait.Pool.start_link(pool_opts(name: :krait_bad_python, python: "nope/python"))

    assert message =~ Path.join(root(), "nope/python")

    File.cd!(root(), fn ->
      assert {:error, %Error{message: message}} =
               Krait.Pool.start_link(pool_opts(name: :krait_bad_cwd, cwd: "no_such_dir"))

      assert message =~ Path.join(root(), "no_such_dir")
    end)

    assert {:error, %Error{category: :invalid_argument, message: message}} =
             Krait.Pool.start_link(pool_opts(name: :krait_bad_size, size: 0))

    assert message =~ ":size must be a positive integer, got: 0"

    assert {:error, %Error{message: message}} =
             Krait.Pool.start_link(Keyword.delete(pool_opts(name: :krait_no_adapter), :adapter))

    assert message =~ ":adapter is required"
  end

  test "the default pool is Krait.Pool" do
    start_supervised!({Krait.Pool, pool_opts(size: 1) |> Keyword.delete(:name)})
    :ok = Krait.Pool.await_ready()
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2})
    assert %{size: 1, ready: 1} = Krait.Pool.stats()

    # the issue's "done when", as written
    printed =
      ExUnit.CaptureIO.capture_io(fn ->
        :ok =
          Krait.execute_stream("stream_progress", %{steps: 5}, fn chunk ->
            IO.inspect(chunk["progress"])
          end)
      end)

    assert printed == "20.0\n40.0\n60.0\n80.0\n100.0\nnil\n"
  end
end
