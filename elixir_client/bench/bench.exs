# The Elixir half of Krait's benchmarks: run by scripts/bench (scripts/benchmarks/run.py), which reads
# the `BENCH {json}` lines this prints and tabulates them beside the Python half and a grpcio baseline.
#
#   cd elixir_client && KRAIT_BENCH='{"quick": true}' mix run bench/bench.exs
#
# KRAIT_BENCH (JSON) sets the sizes; missing keys take the quick defaults below. Every figure is the
# median over `runs` repetitions; progress goes to stderr. `"only": ["items", "bytes"]` runs just those
# steps (start, slow, limits, cancel, unary, items, bytes, concurrency, tiny, duplex, memory); `"worker_root": "/path"` runs the workers
# from another checkout (A/B comparisons of Python changes with the same Elixir code).
Code.require_file("support.exs", __DIR__)
Code.require_file("limits.exs", __DIR__)
Code.require_file("duplex.exs", __DIR__)

defmodule KraitBench do
  @moduledoc false
  alias KraitBench.{Proc, Stats}

  @root Path.expand("../..", __DIR__)
  @python Path.join(@root, ".venv/bin/python")
  @adapter "adapters.showcase:ShowcaseAdapter"
  @mib 1_048_576
  @cols 1024
  @warm_round_trips 2_000

  @defaults %{
    "items" => 20_000,
    "blobs" => 8,
    "blob_mb" => 4,
    "json_batches" => 2,
    "latency_calls" => 300,
    "concurrent_streams" => 40,
    "stream_items" => 200,
    "cancel_samples" => 5,
    "slow_chunks" => 24,
    "pool_sizes" => [1, 4, 8],
    "storm_streams" => 100,
    "soak_s" => 1,
    "runs" => 1,
    "quick" => true
  }

  def main do
    cfg = Map.merge(@defaults, config_from_env())
    Process.put(:worker_root, cfg["worker_root"] || @root)
    # Worker output goes through Logger; only failures matter here.
    Logger.configure(level: :error)

    info("config #{inspect(cfg)}")
    Process.put(:only, cfg["only"])
    step("start", fn -> pool_start(cfg) end)
    step("slow", fn -> slow_consumer(cfg) end)
    step("limits", fn -> limits(cfg) end)

    # The pool over the local link (its default), its worker's gRPC service exposed for grpcio's client ...
    with_pool(BenchPool, 1, [expose_grpc: true], fn pool ->
      step("cancel", fn -> cancellation(pool, cfg) end)
      step("unary", fn -> unary_latency(pool, cfg) end)
      step("items", fn -> small_items(pool, cfg, "ex") end)
      step("bytes", fn -> large_batches(pool, cfg, "ex") end)
    end)

    # ... and the same over gRPC, side by side.
    with_pool(BenchPoolGrpc, 1, [transport: :grpc], fn pool ->
      step("unary", fn -> pool_latency(pool, cfg, "ex_grpc") end)
      step("items", fn -> small_items(pool, cfg, "ex_grpc") end)
      step("bytes", fn -> large_batches(pool, cfg, "ex_grpc") end)
    end)

    with_pool(BenchPool4, 4, [], fn pool ->
      step("concurrency", fn -> concurrency(pool, cfg) end)
    end)

    step("tiny", fn -> with_pool(BenchPoolTiny, 2, [], &tiny_calls(&1, cfg)) end)

    # Streams both ways: input, handler calls, pipelines (three stages, each on its own worker).
    with_pool(BenchPoolDuplex, 3, [], fn pool ->
      step("duplex", fn ->
        report(KraitBench.Duplex.run(pool, cfg, @python, Process.get(:worker_root)))
      end)
    end)

    step("memory", fn -> memory(cfg) end)
  end

  defp config_from_env do
    case System.get_env("KRAIT_BENCH") do
      nil -> %{}
      "" -> %{}
      json -> Krait.JSON.decode!(json)
    end
  end

  ## 1. Small chunks into a callback

  defp small_items(pool, %{"items" => items, "runs" => runs}, prefix) do
    # Warm-up: code loading, and the connection's windows opened up.
    count_small(pool, div(items, 10))

    one_run = fn ->
      {us, count} = Stats.timed(fn -> count_small(pool, items) end)
      check!(count == items + 1, "stream_small delivered #{count} chunks, expected #{items + 1}")
      items / (us / 1.0e6)
    end

    if prefix == "ex" do
      # Over the link, the naive JSON-lines stream it is measured against runs warm and interleaved with
      # it (limit, Krait, limit, Krait), from one process; its spread goes in the table.
      lines = KraitBench.Limits.json_lines_open(@python, Process.get(:worker_root))
      KraitBench.Limits.json_lines(lines, items)

      rounds =
        for _ <- 1..interleave_rounds(runs) do
          %{
            port_jsonl_items_per_s: KraitBench.Limits.json_lines(lines, items),
            ex_items_per_s: one_run.()
          }
        end

      KraitBench.Limits.close(lines)
      report(Map.merge(medians(rounds), spread(rounds, :port_jsonl_items_per_s)))
    else
      report(%{"#{prefix}_items_per_s" => Stats.median_of(runs, one_run)})
    end
  end

  # The callback checks order (cheap, like the baseline's JSON decode): the run fails on any gap.
  defp count_small(pool, items) do
    Process.put(:bench_next, 0)

    :ok =
      Krait.execute_stream(
        "stream_small",
        %{count: items},
        fn chunk ->
          n = Process.get(:bench_next)

          check!(
            chunk.seq == n and (chunk.is_final or chunk["i"] == n),
            "chunk #{n} out of order"
          )

          Process.put(:bench_next, n + 1)
        end,
        pool: pool,
        timeout: 600_000
      )

    Process.delete(:bench_next)
  end

  ## 3. Large float32 batches (npy), and the same data as JSON lists

  defp large_batches(pool, cfg, prefix) do
    %{"blobs" => blobs, "blob_mb" => mb, "json_batches" => json_batches, "runs" => runs} = cfg
    rows = div(mb * @mib, @cols * 4)
    total = blobs * rows * @cols * 4
    array_bytes(pool, max(div(blobs, 10), 1), rows, false)

    rate =
      Stats.median_of(runs, fn ->
        {us, bytes} = Stats.timed(fn -> array_bytes(pool, blobs, rows, false) end)
        check!(bytes == total, "stream_arrays delivered #{bytes} bytes, expected #{total}")
        total / (us / 1.0e6)
      end)

    # JSON lists of 64 rows per chunk; the rate counts float32-equivalent bytes, as the Python half does.
    json_rows = 64
    json_total = json_batches * json_rows * @cols * 4
    {json_us, _} = Stats.timed(fn -> array_bytes(pool, json_batches, json_rows, true) end)

    report(%{
      "#{prefix}_bytes_per_s" => rate,
      "#{prefix}_json_bytes_per_s" => json_total / (json_us / 1.0e6)
    })
  end

  defp array_bytes(pool, batches, rows, as_json) do
    Process.put(:bench_bytes, 0)
    args = %{batches: batches, batch_rows: rows, cols: @cols, as_json: as_json}

    :ok =
      Krait.execute_stream(
        "stream_arrays",
        args,
        fn
          %Krait.Chunk{is_final: true} ->
            :ok

          %Krait.Chunk{data: %Krait.Tensor{data: data}} ->
            Process.put(:bench_bytes, Process.get(:bench_bytes) + byte_size(data))

          %Krait.Chunk{data: %{"rows" => list}} ->
            Process.put(:bench_bytes, Process.get(:bench_bytes) + length(list) * @cols * 4)
        end,
        pool: pool,
        timeout: 600_000
      )

    Process.delete(:bench_bytes)
  end

  ## 4. Unary latency: the pool, its channel alone, and grpcio's client, against the same worker

  @unary_path "/krait.v1.ToolWorker/ExecuteTool"

  # The limits (the bare ping-pong and the link worker driven straight over its Port) run warm, interleaved
  # with the pool and its channel: limit, Krait, limit, Krait, so the machine's state (vCPUs awake or not,
  # a neighbour's load) hits all alike. The limit's p50 spread across the rounds goes in the table.
  defp unary_latency(pool, %{"latency_calls" => calls, "runs" => runs}) do
    {channel, target, token} = worker_channel(pool)
    root = Process.get(:worker_root)
    ping = KraitBench.Limits.ping_open(@python, root)
    direct = KraitBench.Limits.link_direct_open(@python, root)

    request =
      Krait.Proto.ExecuteToolRequest.encode(%Krait.Proto.ExecuteToolRequest{
        tool_name: "add",
        args_json: ~s({"a": 1, "b": 2})
      })

    via_pool = fn ->
      {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
    end

    via_channel = fn -> {:ok, _} = Krait.Channel.unary(channel, @unary_path, request, 10_000) end

    # Warm: ~2,000 round trips wake both vCPUs (a cold ping-pong reads 50-80 µs, a warm one 6-7 µs).
    KraitBench.Limits.ping_samples(ping, @warm_round_trips)
    KraitBench.Limits.link_direct_samples(direct, 200)
    for _ <- 1..200, do: via_pool.() && via_channel.()

    rounds =
      for _ <- 1..interleave_rounds(runs) do
        ping_us = KraitBench.Limits.ping_samples(ping, calls)
        pool_us = samples(calls, via_pool)
        direct_us = KraitBench.Limits.link_direct_samples(direct, calls)
        channel_us = samples(calls, via_channel)
        grpcio = grpcio_latency(target, token, calls)

        %{
          port_ping_p50_us: Stats.percentile(ping_us, 50),
          port_ping_p99_us: Stats.percentile(ping_us, 99),
          ex_unary_p50_us: Stats.percentile(pool_us, 50),
          ex_unary_p99_us: Stats.percentile(pool_us, 99),
          link_direct_p50_us: Stats.percentile(direct_us, 50),
          link_direct_p99_us: Stats.percentile(direct_us, 99),
          ex_conn_unary_p50_us: Stats.percentile(channel_us, 50),
          ex_conn_unary_p99_us: Stats.percentile(channel_us, 99),
          grpcio_unary_p50_us: grpcio["p50"],
          grpcio_unary_p99_us: grpcio["p99"]
        }
      end

    KraitBench.Limits.close(ping)
    KraitBench.Limits.close(direct)
    report(Map.merge(medians(rounds), spread(rounds, :port_ping_p50_us)))
  end

  defp pool_latency(pool, %{"latency_calls" => calls, "runs" => runs}, prefix) do
    via_pool = fn ->
      {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
    end

    for _ <- 1..200, do: via_pool.()

    result =
      Stats.median_of(runs, fn ->
        us = samples(calls, via_pool)
        %{p50: Stats.percentile(us, 50), p99: Stats.percentile(us, 99)}
      end)

    report(%{"#{prefix}_unary_p50_us" => result.p50, "#{prefix}_unary_p99_us" => result.p99})
  end

  defp samples(n, fun), do: for(_ <- 1..n, do: elem(Stats.timed(fun), 0))

  # The worker's channel (the local link), its exposed gRPC address and the token the pool gave it: a lease
  # and the pool's stats.
  defp worker_channel(pool) do
    {:ok, lease} = Krait.Pool.Scheduler.checkout(pool, nil, :hint, :infinity)
    Krait.Pool.Scheduler.checkin(lease)
    %{workers: [%{grpc_port: port}], token: token} = Krait.Pool.stats(pool)
    {{lease.channel, lease.conn}, "127.0.0.1:#{port}", token}
  end

  # grpcio's own client (scripts/benchmarks/raw_grpc.py) calling the same tool on the same worker.
  defp grpcio_latency(target, token, calls) do
    args = ["-m", "scripts.benchmarks.raw_grpc", "latency", target, Integer.to_string(calls)]

    {out, 0} =
      System.cmd(@python, args, cd: Process.get(:worker_root), env: [{"KRAIT_TOKEN", token}])

    out |> String.split("\n", trim: true) |> List.last() |> Krait.JSON.decode!()
  end

  ## The machine's limits measured alone: raw bytes, and the ping-pong cold

  # Row 3's limit (raw 4 MiB frames: long enough to run warm), and the ping-pong measured alone, as it was
  # before the limits ran warm and interleaved (steps unary and items): the table shows both.
  defp limits(cfg) do
    %{"latency_calls" => calls, "blobs" => blobs, "blob_mb" => mb, "runs" => runs} = cfg
    root = Process.get(:worker_root)

    result =
      Stats.median_of(runs, fn ->
        cold = KraitBench.Limits.ping_pong_cold(@python, root, calls)

        %{
          port_ping_cold_p50_us: cold.p50,
          port_ping_cold_p99_us: cold.p99,
          port_bytes_per_s: KraitBench.Limits.raw_bytes(@python, root, blobs, mb)
        }
      end)

    report(result)
  end

  # Limit, Krait, limit, Krait ...: at least 3 rounds, so that even a quick run shows a spread.
  defp interleave_rounds(runs), do: max(runs, 3)

  defp medians(rounds), do: Stats.medians(rounds)
  defp spread(rounds, key), do: Stats.spread(rounds, key)

  ## 5. Pool start

  defp pool_start(%{"pool_sizes" => sizes, "runs" => runs}) do
    # A first start warms the page cache (Python's bytecode files), as on any machine that started
    # Python before.
    start_ready(BenchStart, 1)

    result =
      Map.new(sizes, fn size ->
        ms =
          Stats.median_of(runs, fn ->
            {ms, _} = start_ready(BenchStart, size)
            ms
          end)

        {:"ex_pool_start_#{size}_ms", ms}
      end)

    cpu = Stats.median_of(runs, fn -> elem(start_ready(BenchStart, 1), 1) end)
    cores = System.schedulers_online()

    report(
      Map.merge(result, %{
        ex_worker_cpu_ms: cpu,
        ex_pool_start_8_ideal_ms: max(8 * cpu / cores, result[:ex_pool_start_1_ms] || 0),
        cores: cores
      })
    )
  end

  # ms until every worker is ready, and the first worker's CPU time by then.
  defp start_ready(name, size) do
    started = System.monotonic_time(:microsecond)
    {:ok, _} = Krait.Pool.start_link(pool_opts(name, size))
    :ok = Krait.Pool.await_ready(name, 120_000)
    ms = (System.monotonic_time(:microsecond) - started) / 1000
    [worker | _] = Krait.Pool.stats(name).workers
    cpu = Proc.cpu_ms(worker.os_pid)
    Krait.Pool.stop(name)
    {ms, cpu}
  end

  ## 6. Concurrency: many streams queued on a small pool

  defp concurrency(pool, %{"concurrent_streams" => n, "stream_items" => items, "runs" => runs}) do
    result =
      Stats.median_of(runs, fn ->
        origin = System.monotonic_time(:microsecond)

        outcomes =
          1..n
          |> Enum.map(fn _ -> Task.async(fn -> one_stream(pool, items, origin) end) end)
          |> Task.await_many(600_000)

        firsts = for {:ok, first_us, _, _} <- outcomes, do: first_us / 1000
        intact = Enum.all?(outcomes, &match?({:ok, _, ^items, _}, &1))
        # In the order the calls asked for a worker (spawned processes start in any order).
        by_arrival =
          for {:ok, first_us, _, _} <- Enum.sort_by(outcomes, &elem(&1, 3)), do: first_us

        %{
          ex_concurrency_p50_first_ms: Stats.percentile(firsts, 50),
          ex_concurrency_p99_first_ms: Stats.percentile(firsts, 99),
          ex_concurrency_total_ms: (System.monotonic_time(:microsecond) - origin) / 1000,
          ex_concurrency_in_order: in_order_fraction(by_arrival),
          ex_concurrency_ok: if(intact and length(firsts) == n, do: 1, else: 0)
        }
      end)

    report(result)
  end

  # Tiny calls/s: 50 callers share a pool of 2 link workers, each making unary `add` calls back to
  # back for a fixed time; the scheduler's checkout/checkin is a large part of each call's cost here.
  @tiny_callers 50

  defp tiny_calls(pool, %{"runs" => runs} = cfg) do
    ms = if cfg["quick"], do: 1_000, else: 3_000
    # warm-up: code loading, both workers' first calls
    tiny_round(pool, 200)

    # where the CPU goes: the BEAM's and the workers' own time (/proc) over all measured runs, per call
    workers = for %{os_pid: os_pid} <- Krait.Pool.stats(pool).workers, do: os_pid
    beam = System.pid()
    cpu = fn -> {Proc.cpu_ms(beam), workers |> Enum.map(&Proc.cpu_ms/1) |> Enum.sum()} end
    {beam0, workers0} = cpu.()
    Process.put(:tiny_calls, 0)

    rate =
      Stats.median_of(runs, fn ->
        stop_at = System.monotonic_time(:millisecond) + ms
        {us, counts} = Stats.timed(fn -> tiny_round(pool, stop_at, :until) end)
        Process.put(:tiny_calls, Process.get(:tiny_calls) + Enum.sum(counts))
        Enum.sum(counts) / (us / 1.0e6)
      end)

    {beam1, workers1} = cpu.()
    calls = Process.get(:tiny_calls)

    report(%{
      ex_tiny_calls_per_s: rate,
      ex_tiny_beam_cpu_us_per_call: (beam1 - beam0) * 1000 / calls,
      ex_tiny_workers_cpu_us_per_call: (workers1 - workers0) * 1000 / calls
    })
  end

  defp tiny_round(pool, calls), do: tiny_round(pool, calls, :count)

  defp tiny_round(pool, limit, kind) do
    1..@tiny_callers
    |> Enum.map(fn _ -> Task.async(fn -> tiny_loop(pool, limit, kind, 0) end) end)
    |> Task.await_many(600_000)
  end

  defp tiny_loop(pool, limit, kind, n) do
    done? =
      case kind do
        :count -> n * @tiny_callers >= limit
        :until -> System.monotonic_time(:millisecond) >= limit
      end

    if done? do
      n
    else
      {:ok, _} = Krait.execute("add", %{a: n, b: 1}, pool: pool)
      tiny_loop(pool, limit, kind, n + 1)
    end
  end

  # The fraction of pairs of calls whose first chunks came in the order the calls were made: about 1
  # for a FIFO queue (calls served at once by different workers may swap), about 0.5 for a random one
  # and 0 for a LIFO one.
  defp in_order_fraction(times) do
    indexed = Enum.with_index(times)
    pairs = for {a, i} <- indexed, {b, j} <- indexed, i < j, do: a <= b
    Enum.count(pairs, & &1) / max(length(pairs), 1)
  end

  # {:ok, µs from origin to the first chunk, data chunks received in order, arrival ticket} or
  # {:error, reason}. The ticket is taken just before the call asks the pool for a worker.
  defp one_stream(pool, items, origin) do
    Process.put(:next, 0)
    ticket = :erlang.unique_integer([:monotonic])

    result =
      Krait.execute_stream(
        "stream_small",
        %{count: items},
        fn chunk ->
          n = Process.get(:next)

          if n == 0, do: Process.put(:first, System.monotonic_time(:microsecond) - origin)

          # A lost or reordered chunk stops counting, so the total comes out wrong.
          if chunk.seq == n and (chunk.is_final or chunk["i"] == n),
            do: Process.put(:next, n + 1)
        end,
        pool: pool,
        timeout: 600_000
      )

    case result do
      :ok -> {:ok, Process.get(:first), Process.get(:next) - 1, ticket}
      error -> error
    end
  end

  ## 7. Cancellation: the caller dies, the generator's finally runs

  defp cancellation(pool, %{"cancel_samples" => n}) do
    # A pacing stream (waits between yields) and a busy one (yields as fast as it can, so it sits
    # blocked on a full buffer): the two places a generator can be when its caller dies.
    paced = for i <- 1..n, do: cancel_once(pool, 10, "paced-#{i}")
    busy = for i <- 1..n, do: cancel_once(pool, 0, "busy-#{i}")

    report(%{
      ex_cancel_p50_ms: Stats.percentile(paced, 50),
      ex_cancel_p99_ms: Stats.percentile(paced, 99),
      ex_cancel_busy_p99_ms: Stats.percentile(busy, 99)
    })
  end

  defp cancel_once(pool, interval_ms, tag) do
    parent = self()
    tag = "#{tag}-#{System.unique_integer([:positive])}"
    args = %{interval_ms: interval_ms, tag: tag}

    caller =
      spawn(fn ->
        Krait.execute_stream("endless_stream", args, fn _ -> send(parent, {:tick, tag}) end,
          pool: pool
        )
      end)

    receive do
      {:tick, ^tag} -> :ok
    after
      10_000 -> raise "endless_stream did not start"
    end

    # Die at a random point between two yields.
    Process.sleep(:rand.uniform(15))
    killed_at = System.os_time(:microsecond)
    Process.exit(caller, :kill)
    flush_ticks(tag)
    finally_at = await_event(pool, tag, "finally", 100)
    (finally_at * 1.0e6 - killed_at) / 1000
  end

  defp flush_ticks(tag) do
    receive do
      {:tick, ^tag} -> flush_ticks(tag)
    after
      0 -> :ok
    end
  end

  defp await_event(_pool, tag, _key, 0), do: raise("no 'finally' recorded for #{tag}")

  defp await_event(pool, tag, key, tries) do
    case Krait.execute("stream_events", %{tag: tag}, pool: pool, timeout: 10_000) do
      {:ok, %{^key => at}} ->
        at

      _ ->
        Process.sleep(5)
        await_event(pool, tag, key, tries - 1)
    end
  end

  ## 8. Memory: a consumer 10x slower than the producer

  defp slow_consumer(%{"slow_chunks" => chunks}) do
    rows = div(@mib, @cols * 4)
    args = %{batches: chunks, batch_rows: rows, cols: @cols}

    # The producer's pace, with a consumer that keeps up (on a worker of its own, so the measured one
    # starts from idle).
    {fast_us, _} =
      with_pool(BenchSlow, 1, [], fn pool ->
        Stats.timed(fn -> array_bytes(pool, chunks, rows, false) end)
      end)

    delay_ms = max(1, round(10 * fast_us / chunks / 1000))

    with_pool(BenchSlow, 1, [], fn pool ->
      [%{os_pid: worker_os}] = Krait.Pool.stats(pool).workers
      beam_os = String.to_integer(System.pid())
      :erlang.garbage_collect()
      base = %{worker: Proc.status_mb(worker_os, "VmRSS"), beam: Proc.status_mb(beam_os, "VmRSS")}
      reset? = Proc.reset_peak(worker_os) and Proc.reset_peak(beam_os)
      sampler = start_sampler([worker_os, beam_os])

      {slow_us, _} =
        Stats.timed(fn ->
          :ok =
            Krait.execute_stream("stream_arrays", args, fn _ -> Process.sleep(delay_ms) end,
              pool: pool,
              timeout: 600_000
            )
        end)

      sampled = stop_sampler(sampler)

      peak = fn os_pid ->
        hwm = if reset?, do: Proc.status_mb(os_pid, "VmHWM"), else: 0
        max(hwm || 0, sampled[os_pid] || 0)
      end

      report(%{
        ex_slow_worker_rss_mb: peak.(worker_os),
        ex_slow_beam_rss_mb: peak.(beam_os),
        ex_slow_worker_base_mb: base.worker,
        ex_slow_beam_base_mb: base.beam,
        ex_slow_streamed_mb: chunks,
        ex_slow_ratio: slow_us / fast_us
      })
    end)
  end

  # Samples VmRSS of the processes every 10 ms (a fallback for kernels without clear_refs).
  defp start_sampler(os_pids) do
    parent = self()
    spawn_link(fn -> sample_loop(parent, os_pids, %{}) end)
  end

  defp sample_loop(parent, os_pids, peaks) do
    peaks =
      Map.new(os_pids, fn pid ->
        {pid, max(peaks[pid] || 0, Proc.status_mb(pid, "VmRSS") || 0)}
      end)

    receive do
      {:stop, ^parent} -> send(parent, {:peaks, self(), peaks})
    after
      10 -> sample_loop(parent, os_pids, peaks)
    end
  end

  defp stop_sampler(pid) do
    send(pid, {:stop, self()})

    receive do
      {:peaks, ^pid, peaks} -> peaks
    end
  end

  ## 14. Worker memory: a storm of cancelled busy streams, then a soak, with and without MALLOC_ARENA_MAX

  # glibc gives each thread that allocates under contention an arena of its own and seldom returns it: a
  # worker's RSS grows with the threads that ever ran tools at once. The pool sets MALLOC_ARENA_MAX=2 unless
  # its :env says otherwise; `nil` unsets it (glibc's default: 8 x cores). Both pools run in the same run,
  # their phases interleaved (storm, storm, soak, soak), each worker's VmRSS before and after a phase and its
  # peak (VmHWM, reset before the phase, or 10 ms samples). Two calls at a time per worker: with 8 busy
  # generators at once each cancel waits its turn for the GIL (~150 ms) and the storm takes minutes.
  @memory_concurrency 2

  defp memory(%{"storm_streams" => storms, "soak_s" => soak_s}) do
    # Fresh workers for each phase, so the soak does not start from what the storm left.
    storm = memory_phase(fn pool -> cancel_storm(pool, storms) end)
    soak = memory_phase(fn pool -> soak(pool, soak_s * 1000) end)

    report(
      for {phase, by_label} <- [storm: storm, soak: soak],
          {label, figures} <- by_label,
          {key, mb} <- figures,
          into: %{mem_storm_streams: storms, mem_soak_s: soak_s},
          do: {"mem_#{phase}_#{label}_#{key}_mb", mb}
    )
  end

  # Both variants side by side: a pool of one worker each, the phase run on one, then on the other.
  defp memory_phase(fun) do
    variants = [{"arenas2", []}, {"glibc", [env: %{"MALLOC_ARENA_MAX" => nil}]}]

    pools =
      for {{label, extra}, i} <- Enum.with_index(variants) do
        name = :"BenchMemory#{i}"
        opts = pool_opts(name, 1) ++ [calls_per_worker: @memory_concurrency] ++ extra
        {:ok, _} = Krait.Pool.start_link(opts)
        :ok = Krait.Pool.await_ready(name, 120_000)
        {label, name}
      end

    try do
      for {label, pool} <- pools, into: %{}, do: {label, rss_phase(pool, fn -> fun.(pool) end)}
    after
      for {_, pool} <- pools, do: Krait.Pool.stop(pool)
    end
  end

  defp rss_phase(pool, fun) do
    [%{os_pid: os_pid}] = Krait.Pool.stats(pool).workers
    start = Proc.status_mb(os_pid, "VmRSS")
    reset? = Proc.reset_peak(os_pid)
    sampler = start_sampler([os_pid])
    fun.()

    # What the worker keeps once the calls are gone (cancelled tools finish their last yield first).
    Process.sleep(200)
    sampled = stop_sampler(sampler)
    [%{os_pid: ^os_pid}] = Krait.Pool.stats(pool).workers
    hwm = if reset?, do: Proc.status_mb(os_pid, "VmHWM"), else: 0

    %{
      start: start,
      end: Proc.status_mb(os_pid, "VmRSS"),
      peak: max(hwm || 0, sampled[os_pid] || 0)
    }
  end

  # `count` busy generators (endless_stream with no pause: the tool thread yields as fast as credit allows),
  # each cancelled by killing its caller once the first chunk arrived, @memory_concurrency at a time.
  defp cancel_storm(pool, count) do
    1..count
    |> Task.async_stream(fn _ -> cancel_busy(pool) end,
      max_concurrency: @memory_concurrency,
      timeout: 60_000
    )
    |> Stream.run()
  end

  defp cancel_busy(pool) do
    parent = self()
    ref = make_ref()

    caller =
      spawn(fn ->
        Krait.execute_stream(
          "endless_stream",
          %{interval_ms: 0},
          fn _ ->
            unless Process.get(:told), do: send(parent, {:tick, ref})
            Process.put(:told, true)
          end,
          pool: pool,
          timeout: 60_000
        )
      end)

    receive do
      {:tick, ^ref} -> Process.exit(caller, :kill)
    after
      30_000 -> raise "endless_stream did not start"
    end
  end

  # @memory_concurrency callers for `ms`, each cycling through ten unary calls, a stream of 1,000 small
  # chunks, 2 MiB of float32 batches and a cancelled busy stream: steady mixed traffic.
  defp soak(pool, ms) do
    until = System.monotonic_time(:millisecond) + ms

    1..@memory_concurrency
    |> Task.async_stream(fn _ -> soak_loop(pool, until) end,
      max_concurrency: @memory_concurrency,
      timeout: ms + 60_000
    )
    |> Stream.run()
  end

  defp soak_loop(pool, until) do
    if System.monotonic_time(:millisecond) < until do
      for _ <- 1..10, do: {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
      :ok = Krait.execute_stream("stream_small", %{count: 1000}, fn _ -> :ok end, pool: pool)

      :ok =
        Krait.execute_stream(
          "stream_arrays",
          %{batches: 2, batch_rows: 256, cols: @cols},
          fn _ -> :ok end,
          pool: pool
        )

      cancel_busy(pool)
      soak_loop(pool, until)
    end
  end

  ## Helpers

  defp pool_opts(name, size) do
    [name: name, adapter: @adapter, size: size, python: @python, cwd: Process.get(:worker_root)]
  end

  defp with_pool(name, size, extra, fun) do
    {:ok, _} = Krait.Pool.start_link(pool_opts(name, size) ++ extra)
    :ok = Krait.Pool.await_ready(name, 120_000)

    try do
      fun.(name)
    after
      Krait.Pool.stop(name)
    end
  end

  defp check!(true, _message), do: :ok
  defp check!(false, message), do: raise(message)

  defp report(map) do
    rounded = Map.new(map, fn {k, v} -> {k, if(is_float(v), do: Float.round(v, 3), else: v)} end)
    IO.puts("BENCH " <> IO.iodata_to_binary(Krait.JSON.encode!(rounded)))
  end

  # `"only": ["items", "bytes"]` in KRAIT_BENCH runs just those steps.
  defp step(name, fun) do
    only = Process.get(:only)

    if only == nil or name in only do
      {us, _} = Stats.timed(fun)
      info("#{name}: #{round(us / 1000)} ms")
    end
  end

  defp info(message), do: IO.puts(:stderr, "[bench] " <> message)
end

KraitBench.main()
