defmodule Krait.Pool.RecycleTest do
  # Recycling (`recycle: [calls:, age:, rss_mb:]`) with real workers: the replacement starts first,
  # no call fails, sessions end through on_session_end, and stats, telemetry and metrics say why.
  # The adapter is test/support/python/recycle_adapter.py; it appends each session's end to a file.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag timeout: 120_000
  @adapter_dir Path.expand("../../support/python", __DIR__)

  setup do
    log = Path.join(System.tmp_dir!(), "krait-sessions-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(log) end)
    %{log: log}
  end

  defp recycle_pool!(log, opts) do
    start_pool!(
      Keyword.merge(
        [
          adapter: "recycle_adapter:RecycleAdapter",
          cwd: @adapter_dir,
          env: [{"KRAIT_TEST_SESSION_LOG", log}]
        ],
        opts
      )
    )
  end

  # Polls the pool's stats until told to stop; returns the fewest ready workers it saw, the
  # pool's size and how many samples it took.
  defp watch_capacity(pool) do
    parent = self()

    spawn_link(fn ->
      loop = fn loop, low, n ->
        receive do
          :stop -> send(parent, {:capacity, low, n})
        after
          2 ->
            %{ready: ready} = Krait.Pool.stats(pool)
            loop.(loop, min(low, ready), n + 1)
        end
      end

      loop.(loop, :infinity, 0)
    end)
  end

  defp stop_watch(watcher) do
    send(watcher, :stop)
    assert_receive {:capacity, low, samples}, 5_000
    {low, samples}
  end

  defp ended_sessions(log) do
    case File.read(log) do
      {:ok, text} ->
        for line <- String.split(text, "\n", trim: true), do: elem(Krait.JSON.decode(line), 1)

      {:error, :enoent} ->
        []
    end
  end

  defp drain(acc \\ []) do
    receive do
      message -> drain([message | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  # Each call naps 5 ms, so that a worker's 100 calls last about as long as a worker takes to start
  # (0.4-1 s here): the replacement, started early, takes over near the limit.
  test "2,000 calls from 8 callers over recycle: [calls: 100]: none fails, workers turn over, capacity holds",
       %{log: log} do
    Krait.Telemetry.subscribe()
    pool = recycle_pool!(log, size: 2, recycle: [calls: 100])
    watcher = watch_capacity(pool)

    results =
      1..8
      |> Task.async_stream(
        fn _ ->
          for _ <- 1..250,
              do: Krait.execute("nap", %{seconds: 0.005}, pool: pool, timeout: 30_000)
        end,
        timeout: 40_000,
        max_concurrency: 8
      )
      |> Enum.flat_map(fn {:ok, rs} -> rs end)

    {low, samples} = stop_watch(watcher)

    assert length(results) == 2_000
    assert [] = Enum.reject(results, &match?({:ok, _}, &1))

    ids = results |> Enum.map(fn {:ok, r} -> r["worker_id"] end) |> Enum.uniq()

    # 2,000 calls over 2 workers replaced after about 100 each: both turned over at least once, however
    # slowly the machine starts a worker (a loaded CI machine: each replacement serves longer)
    assert length(ids) >= 4, "only #{length(ids)} workers served: #{inspect(ids)}"

    # every replaced worker was given about its limit: passed over while another worker is idle
    per_worker = Enum.frequencies_by(results, fn {:ok, r} -> r["worker_id"] end)
    stats = Krait.Pool.stats(pool)
    current = MapSet.new(stats.workers, & &1.id)
    retired = Map.drop(per_worker, MapSet.to_list(current))
    assert map_size(retired) >= 2

    # capacity: the replacement starts before the worker it replaces stops taking calls
    assert samples > 50
    assert low == 2, "ready dipped to #{low} during recycling"

    # why: stats, telemetry and metrics
    assert stats.recycled.calls >= 2
    assert stats.recycled.age == 0 and stats.recycled.rss_mb == 0
    assert Enum.sum(Enum.map(stats.workers, & &1.recycles)) >= 2

    # every replacement was decided at the limit or before it (started early enough to be ready near
    # it); how far past it the old worker served depends on how long a start takes on this machine
    events = drain()

    decided =
      for {:krait_event, [:krait, :worker, :recycling], %{calls: n}, %{reason: :calls}} <- events,
          do: n

    assert length(decided) >= 2 and Enum.all?(decided, &(&1 in 1..100)), inspect(decided)

    done =
      for {:krait_event, [:krait, :worker, :recycled], %{calls: n}, %{reason: :calls}} <- events,
          do: n

    assert done != [] and Enum.all?(done, &(&1 >= 1)), inspect(done)

    assert Krait.Metrics.prometheus(pool) =~
             ~s(krait_pool_workers_recycled_total{reason="calls"} #{stats.recycled.calls}\n)
  end

  test "a session stays on its worker until it is recycled, then ends there through on_session_end",
       %{log: log} do
    Krait.Telemetry.subscribe()
    pool = recycle_pool!(log, size: 2, recycle: [calls: 30])
    s = "recycled-session-#{System.unique_integer([:positive])}"
    call = fn -> Krait.execute("whoami", %{}, pool: pool, session_id: s) end

    before = for _ <- 1..10, do: call.()
    [{:ok, %{"worker_id" => wid}} | _] = before
    # all on one worker, in one session
    assert Enum.map(before, fn {:ok, r} -> {r["worker_id"], r["count"]} end) ==
             Enum.map(1..10, &{wid, &1})

    # other callers use up its worker's calls
    others =
      Task.async_stream(1..80, fn _ -> Krait.execute("whoami", %{}, pool: pool) end,
        max_concurrency: 4
      )
      |> Enum.map(fn {:ok, r} -> r end)

    assert Enum.all?(others, &match?({:ok, _}, &1))

    assert_receive {:krait_event, [:krait, :worker, :recycled], _, %{worker_id: ^wid}}, 15_000

    assert eventually(
             fn ->
               Enum.any?(ended_sessions(log), &(&1["session_id"] == s and &1["worker_id"] == wid))
             end,
             15_000
           )

    # the session goes on, afresh, on another worker: no call failed
    assert {:ok, %{"worker_id" => other, "count" => 1}} = call.()
    assert other != wid
  end

  test "age: a worker is replaced after its time, between calls", %{log: log} do
    Krait.Telemetry.subscribe()
    pool = recycle_pool!(log, size: 1, recycle: [age: 1_500])
    [%{id: first}] = Krait.Pool.stats(pool).workers

    # calls keep going while it is replaced
    results =
      for _ <- 1..40 do
        Process.sleep(50)
        Krait.execute("whoami", %{}, pool: pool)
      end

    assert Enum.all?(results, &match?({:ok, _}, &1))

    assert_receive {:krait_event, [:krait, :worker, :recycled], %{lifetime: lifetime},
                    %{worker_id: ^first, reason: :age}},
                   10_000

    # replaced about when it reached its age: its replacement started early enough to be ready then
    assert lifetime in 500..3_000
    assert {:ok, %{"worker_id" => second}} = Krait.execute("whoami", %{}, pool: pool)
    assert second != first
    assert Krait.Pool.stats(pool).recycled.age >= 1
  end

  # Samples the pool's stats until told to stop: the fewest ready workers, the most replacements
  # starting at once, whether a worker was seen waiting its turn (due, no replacement yet), and which
  # workers had a replacement.
  defp watch_replacements(pool) do
    parent = self()

    spawn_link(fn ->
      loop = fn loop, acc ->
        receive do
          :stop -> send(parent, {:replacements, acc})
        after
          2 ->
            %{ready: ready, workers: workers} = Krait.Pool.stats(pool)
            starting = Enum.filter(workers, & &1.replacement)
            waiting = Enum.any?(workers, &(&1.recycle != nil and &1.replacement == nil))

            loop.(loop, %{
              acc
              | low: min(acc.low, ready),
                most: max(acc.most, length(starting)),
                waited: acc.waited or waiting,
                replaced: Enum.reduce(starting, acc.replaced, &MapSet.put(&2, &1.id)),
                samples: acc.samples + 1
            })
        end
      end

      loop.(loop, %{low: :infinity, most: 0, waited: false, replaced: MapSet.new(), samples: 0})
    end)
  end

  # Calls `nap` in a loop until told to stop; sends back its results.
  defp steady_caller(pool) do
    parent = self()

    spawn_link(fn ->
      loop = fn loop, acc ->
        receive do
          :stop -> send(parent, {:calls, self(), Enum.reverse(acc)})
        after
          0 ->
            r = Krait.execute("nap", %{seconds: 0.01}, pool: pool, timeout: 30_000)
            loop.(loop, [r | acc])
        end
      end

      loop.(loop, [])
    end)
  end

  test "age: workers started together are replaced one at a time; calls go on, capacity holds",
       %{log: log} do
    Krait.Telemetry.subscribe()
    pool = recycle_pool!(log, size: 3, recycle: [age: 2_000])
    originals = Enum.map(Krait.Pool.stats(pool).workers, & &1.id)
    assert length(originals) == 3
    watcher = watch_replacements(pool)
    callers = for _ <- 1..3, do: steady_caller(pool)

    # all three reach their age about together, and are all replaced in turn
    for id <- originals do
      assert_receive {:krait_event, [:krait, :worker, :recycled], _,
                      %{worker_id: ^id, reason: :age}},
                     60_000
    end

    results =
      for pid <- callers do
        send(pid, :stop)
        assert_receive {:calls, ^pid, calls}, 35_000
        calls
      end
      |> List.flatten()

    send(watcher, :stop)
    assert_receive {:replacements, seen}, 5_000

    assert length(results) > 30
    assert [] = Enum.reject(results, &match?({:ok, _}, &1))
    assert seen.samples > 50
    # never two replacements starting at once, and one did wait for another's
    assert seen.most == 1
    assert seen.waited
    assert MapSet.subset?(MapSet.new(originals), seen.replaced)
    # capacity never dipped
    assert seen.low == 3, "ready dipped to #{seen.low} during recycling"
    assert Krait.Pool.stats(pool).recycled.age >= 3
  end

  test "rss_mb: a worker that grows past the limit is replaced on a health tick", %{log: log} do
    Krait.Telemetry.subscribe()
    pool = recycle_pool!(log, size: 1, recycle: [rss_mb: 250], health_interval: 200)

    [%{id: first}] = Krait.Pool.stats(pool).workers
    # read on the health ticks, and below the limit at first
    assert eventually(fn -> is_float(hd(Krait.Pool.stats(pool).workers).rss_mb) end)
    [%{rss_mb: small, recycle: nil}] = Krait.Pool.stats(pool).workers
    assert small < 250

    assert {:ok, grown} = Krait.execute("grow", %{mb: 300}, pool: pool)
    assert grown == 300

    assert_receive {:krait_event, [:krait, :worker, :recycling], %{rss_mb: mb},
                    %{worker_id: ^first, reason: :rss_mb}},
                   10_000

    assert mb >= 250
    assert_receive {:krait_event, [:krait, :worker, :recycled], _, %{worker_id: ^first}}, 15_000
    assert {:ok, %{"worker_id" => second}} = Krait.execute("whoami", %{}, pool: pool)
    assert second != first
    assert Krait.Pool.stats(pool).recycled.rss_mb == 1
  end

  test "workers get MALLOC_ARENA_MAX=2 unless the pool's env says otherwise", %{log: log} do
    default = recycle_pool!(log, size: 1)
    assert {:ok, "2"} = Krait.execute("env", %{name: "MALLOC_ARENA_MAX"}, pool: default)

    four = recycle_pool!(log, size: 1, env: [{"MALLOC_ARENA_MAX", "4"}])
    assert {:ok, "4"} = Krait.execute("env", %{name: "MALLOC_ARENA_MAX"}, pool: four)

    unset = recycle_pool!(log, size: 1, env: [{"MALLOC_ARENA_MAX", nil}])
    assert {:ok, nil} = Krait.execute("env", %{name: "MALLOC_ARENA_MAX"}, pool: unset)
  end

  test "recycle is refused for remote pools and when malformed" do
    assert {:error, %Krait.Error{message: m1}} =
             Krait.Pool.start_link(endpoints: ["127.0.0.1:1"], recycle: [calls: 5])

    assert m1 =~ ":recycle"

    for bad <- [[calls: 0], [ttl: 5], [rss_mb: "1"], :yes] do
      assert {:error, %Krait.Error{category: :invalid_argument, message: m}} =
               Krait.Pool.Config.build(pool_opts(recycle: bad))

      assert m =~ "recycle"
    end
  end
end
