defmodule Krait.Pool.WorkerDeathTest do
  # SIGKILL of a worker's OS process under load: only the call running on it may fail; no call is
  # handed to the dead worker, and a call that never reached it is retried elsewhere.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 120_000

  # Runs `callers` processes that each loop calling `add` until told to stop; returns a function that
  # stops them and returns every result.
  defp load(pool, callers) do
    parent = self()

    pids =
      for _ <- 1..callers do
        spawn_link(fn -> loop(pool, parent, []) end)
      end

    fn ->
      Enum.each(pids, &send(&1, :stop))
      Enum.flat_map(pids, fn pid -> receive(do: ({:results, ^pid, r} -> r)) end)
    end
  end

  defp loop(pool, parent, acc) do
    receive do
      :stop -> send(parent, {:results, self(), acc})
    after
      0 ->
        loop(pool, parent, [
          Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 30_000) | acc
        ])
    end
  end

  defp failures(results), do: Enum.reject(results, &match?({:ok, 3.0}, &1))

  defp kill_one_ready_worker(pool) do
    os_pid = eventually(fn -> Enum.random(ready_os_pids(pool) ++ [nil]) end, 20_000)
    os_kill(os_pid, "KILL")
    os_pid
  end

  defp ready_os_pids(pool) do
    for %{status: s, os_pid: p} <- Krait.Pool.stats(pool).workers, s in [:idle, :busy], p, do: p
  end

  test "50 looping callers, pool of 2, one SIGKILL: at most the call in flight fails" do
    capture_log(fn ->
      pool = start_pool!(size: 2)
      stop = load(pool, 50)

      assert eventually(fn ->
               Enum.sum(Enum.map(Krait.Pool.stats(pool).workers, & &1.calls)) > 200
             end)

      killed = kill_one_ready_worker(pool)
      # the pool notices, replaces the worker and keeps serving
      assert eventually(fn -> killed not in ready_os_pids(pool) end)
      assert eventually(fn -> Krait.Pool.stats(pool).ready == 2 end, 20_000)
      calls_before = Enum.sum(Enum.map(Krait.Pool.stats(pool).workers, & &1.calls))

      assert eventually(fn ->
               Enum.sum(Enum.map(Krait.Pool.stats(pool).workers, & &1.calls)) > calls_before + 100
             end)

      results = stop.()

      failed = failures(results)

      assert length(failed) <= 1,
             "#{length(failed)} of #{length(results)} calls failed, e.g. #{inspect(Enum.take(failed, 3))}"

      for {:error, error} <- failed do
        assert %Error{category: :worker} = error
      end
    end)
  end

  test "6 kills while 150 calls run 6 at a time on a pool of 3: failures at most the kills" do
    capture_log(fn ->
      pool = start_pool!(size: 3)
      parent = self()

      runner =
        spawn_link(fn ->
          results =
            1..150
            |> Task.async_stream(
              fn _ ->
                Krait.execute("slow_tool", %{seconds: 0.05}, pool: pool, timeout: 60_000)
              end,
              max_concurrency: 6,
              timeout: 120_000
            )
            |> Enum.map(fn {:ok, r} -> r end)

          send(parent, {:done, results})
        end)

      runner_ref = Process.monitor(runner)

      for _ <- 1..6 do
        assert eventually(fn -> Krait.Pool.stats(pool).ready >= 2 end, 20_000)
        kill_one_ready_worker(pool)
        Process.sleep(150)
      end

      assert_receive {:done, results}, 120_000
      # The runner sends its results and then ends: wait for its end rather than race it.
      assert_receive {:DOWN, ^runner_ref, :process, ^runner, reason}
                     when reason in [:normal, :noproc],
                     5_000

      failed = Enum.reject(results, &match?({:ok, %{"cancelled" => false}}, &1))
      assert length(results) == 150

      assert length(failed) <= 6,
             "#{length(failed)} calls failed, e.g. #{inspect(Enum.take(failed, 3))}"

      for {:error, error} <- failed, do: assert(%Error{category: :worker} = error)
    end)
  end

  test "a call handed a dead worker's lease never reports a death it did not see" do
    # The worker dies while idle; the next call must run on the other worker (or the replacement),
    # not fail with :worker.
    capture_log(fn ->
      pool = start_pool!(size: 2)

      for _ <- 1..5 do
        [os_pid | _] = ready_os_pids(pool)
        os_kill(os_pid, "KILL")
        assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 30_000)
        # the killed worker is out, and its replacement up
        assert eventually(fn -> os_pid not in ready_os_pids(pool) end)
        assert eventually(fn -> Krait.Pool.stats(pool).ready == 2 end, 20_000)
      end
    end)
  end

  test "a call still in a stopping worker's mailbox is retried, not failed" do
    # Krait.Link opens a call with a message: the worker process may stop with the open request still
    # unread. That call never reached Python; it must run on the replacement, not fail with :worker.
    capture_log(fn ->
      pool = start_pool!(size: 1)
      [%{pid: worker}] = Krait.Pool.stats(pool).workers
      :ok = :sys.suspend(worker)

      call =
        Task.async(fn -> Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 30_000) end)

      # the open request waits in the suspended worker's mailbox
      assert eventually(fn ->
               match?(
                 {:message_queue_len, n} when n > 0,
                 Process.info(worker, :message_queue_len)
               )
             end)

      :ok = :sys.terminate(worker, {:shutdown, :test})
      assert {:ok, 3.0} = Task.await(call, 30_000)
    end)
  end
end
