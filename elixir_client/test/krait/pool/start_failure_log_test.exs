defmodule Krait.Pool.StartFailureLogTest do
  @moduledoc """
  A pool that cannot start its workers logs one line per failed start (the cause, the attempt, the
  backoff before the next), thinning out as the attempts go on; what the worker itself wrote, its raw
  stderr included, reaches Logger only (metadata `worker_id`), at `:debug`.
  """
  # Sync: it changes Logger's level, and LogForwarder sees every test's events.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Krait.TestHelpers
  alias Krait.Test.LogForwarder

  @moduletag timeout: 60_000

  defp start_broken_pool(overrides) do
    name = :"KraitNoisy#{System.unique_integer([:positive])}"
    opts = pool_opts([name: name, size: 1, backoff_min: 20, backoff_max: 40] ++ overrides)
    start_supervised!({Krait.Pool, opts}, id: name)
    name
  end

  # the log's entries (each starts with a timestamp line) that mention `word`
  defp entries(log, word) do
    log
    |> String.split(~r/^\d\d:\d\d:\d\d\.\d+ /m, trim: true)
    |> Enum.reject(&(String.trim(&1) == ""))
    |> Enum.filter(&String.contains?(&1, word))
  end

  test "one line per failed start, with attempt and backoff; 1-3, then 4, 8, 16... shown" do
    log =
      capture_log(fn ->
        pool = start_broken_pool(adapter: "no_such_module:Nope")

        assert eventually(
                 fn -> Enum.all?(Krait.Pool.stats(pool).workers, &(&1.restarts >= 9)) end,
                 30_000
               )

        stop_supervised!(pool)
        Process.put(:pool, pool)
      end)

    pool = inspect(Process.get(:pool)) |> String.trim_leading(":")
    # every entry of the log (the module is sync: nothing else runs meanwhile)
    lines = entries(log, "")
    assert lines != []

    for line <- lines do
      assert line =~
               ~r/^\[error\] Krait worker #{pool}-1\.\d+ failed to start \(attempt \d+, exit status 1\): cannot load adapter no_such_module:Nope: No module named 'no_such_module' .*; next attempt in \d+ ms/

      # one line: the cause is not repeated in a second line or a traceback
      assert line |> String.trim() |> String.split("\n") |> length() == 1
    end

    attempts =
      for line <- lines,
          do: Regex.run(~r/attempt (\d+)/, line) |> List.last() |> String.to_integer()

    assert Enum.max(attempts) >= 8
    assert attempts == Enum.filter(1..Enum.max(attempts), &(&1 <= 4 or &1 in [8, 16, 32]))

    # the backoff doubles up to backoff_max; the first failure says calls now fail fast
    assert [first, second, third | _] = lines
    assert first =~ "next attempt in 20 ms; no worker is up: calls fail fast until one starts"
    assert second =~ "next attempt in 40 ms" and not (second =~ "fail fast")
    assert third =~ "next attempt in 40 ms"
  end

  test "an interpreter's own stderr reaches Logger only, with worker_id, and is the last_error" do
    LogForwarder.attach()
    level = Logger.level()
    Logger.configure(level: :debug)
    on_exit(fn -> Logger.configure(level: level) end)

    capture_log(fn ->
      # a Python without Krait: it fails before python_worker could send its output as frames
      pool = start_broken_pool(python: System.find_executable("python3"), cwd: "/")

      assert {:error, %Krait.Error{details: %{reason: :workers_failing, last_error: last_error}}} =
               Krait.Pool.await_ready(pool, 20_000)

      assert last_error =~ ~r/python3?[\d.]*: No module named python_worker$/
      events = collect_until_stopped(pool)
      prefix = "#{pool}-1."

      ours =
        for {level, text, %{worker_id: wid}} <- events,
            String.starts_with?(wid, prefix),
            do: {level, text}

      # the stderr, as one event at :debug with the worker's id
      assert {:debug, last_error} in ours

      assert [line | _] = for({:error, "Krait worker " <> _ = text} <- ours, do: text)

      assert String.ends_with?(
               line,
               ": #{last_error}; next attempt in 20 ms; no worker is up: calls fail fast until one starts"
             )

      # nothing else from this pool's workers above :debug
      assert Enum.all?(ours, fn {level, text} -> level == :debug or text =~ "failed to start" end),
             inspect(ours)
    end)
  end

  defp collect_until_stopped(pool) do
    stop_supervised!(pool)
    send(self(), :end)
    collect([])
  end

  defp collect(acc) do
    receive do
      :end -> Enum.reverse(acc)
      {:log, level, text, meta} -> collect([{level, text, meta} | acc])
    end
  end
end
