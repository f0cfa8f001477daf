defmodule Krait.Metrics do
  @moduledoc """
  A pool's Prometheus metrics: what only the pool sees, with its workers' own metrics (fetched over
  the link with the workers' `Metrics` call, each sample labelled `worker_id`), in Prometheus' text
  format. `prometheus/1` returns the text; the pool option `metrics_port` serves it at `/metrics`
  (see `Krait.Metrics.HTTP`), so that one scrape target covers a pool.

  The pool's metrics:

  | metric | type | labels |
  |---|---|---|
  | `krait_pool_calls_total` | counter | `tool`, `outcome` (`ok`, an error category, `exception`) |
  | `krait_pool_queue_length` | gauge | |
  | `krait_pool_queue_wait_seconds` | histogram | (the time a checkout took, queued or not) |
  | `krait_pool_checkouts_refused_total` | counter | `reason` (`worker_busy`, `pool_saturated`, `queue_timeout`, ...) |
  | `krait_pool_worker_restarts_total` | counter | |
  | `krait_pool_workers_recycled_total` | counter | `reason` (`calls`, `age`, `rss_mb`: see `Krait.Pool.Recycle`) |
  | `krait_pool_workers` | gauge | `state` (`ready`, `busy`, `starting`) |

  Counters live in an ETS table per pool (made by the pool's supervisor, written by the callers with
  `:ets.update_counter/4`: no process in the way of a call); gauges are read from
  `Krait.Pool.stats/1` at scrape time. Prometheus' text format is simple enough to write here: no
  Prometheus library is reachable for the BEAM (hex is not), and OTP has none.
  """

  # seconds; a checkout is usually immediate, and waits in the queue up to the call's timeout
  @wait_buckets [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0]
  @unknown_tool "_unknown"
  @metrics_path Krait.Proto.path(:metrics)

  @doc false
  # Read several times per call: the name is built once per pool (`Module.concat/2` makes an atom
  # from a string, ~1 µs) and kept in :persistent_term by `setup/1`.
  @spec table(atom()) :: atom()
  def table(pool),
    do: :persistent_term.get({__MODULE__, pool}, nil) || Module.concat(pool, Metrics)

  @doc false
  # Called by the pool's supervisor as it starts (the table lives as long as the pool).
  @spec setup(Krait.Pool.Config.t()) :: :ok
  def setup(config) do
    name = Module.concat(config.name, Metrics)
    # put only when missing: replacing a persistent term costs every process a scan
    if :persistent_term.get({__MODULE__, config.name}, nil) != name,
      do: :persistent_term.put({__MODULE__, config.name}, name)

    :ets.new(table(config.name), [:named_table, :public, :set, write_concurrency: true])
    # read by each call of the pool (Krait.Tracing): does the pool start traces?
    :ets.insert(table(config.name), {:trace, config.trace})
    :ok
  end

  @doc false
  @spec tracing?(term()) :: boolean()
  def tracing?(pool) when is_atom(pool) do
    match?([{:trace, true}], :ets.lookup(table(pool), :trace))
  rescue
    ArgumentError -> false
  end

  def tracing?(_pool), do: false

  @doc false
  @spec call_ended(atom(), String.t() | nil, atom()) :: :ok
  def call_ended(pool, tool, outcome) do
    # a tool the worker does not have is not a label value: a caller's typo would make a series
    tool = if outcome == :not_found or tool == nil, do: @unknown_tool, else: tool
    bump(pool, {:calls, tool, outcome}, 1)
  end

  @doc false
  @spec checkout(atom(), atom(), integer()) :: :ok
  def checkout(pool, :ok, wait) do
    seconds = System.convert_time_unit(wait, :native, :microsecond) / 1_000_000
    bucket = Enum.find_index(@wait_buckets, &(seconds <= &1)) || length(@wait_buckets)
    bump(pool, {:wait_bucket, bucket}, 1)
    bump(pool, :wait_count, 1)
    bump(pool, :wait_sum_us, System.convert_time_unit(wait, :native, :microsecond))
  end

  def checkout(pool, reason, _wait), do: bump(pool, {:refused, reason}, 1)

  @doc false
  # A recycled worker has stopped (the pool's scheduler counts it).
  @spec recycled(atom(), atom()) :: :ok
  def recycled(pool, reason), do: bump(pool, {:recycled, reason}, 1)

  defp bump(pool, key, n) do
    :ets.update_counter(table(pool), key, {2, n}, {key, 0})
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc """
  The pool's metrics and its ready workers' in Prometheus' text exposition format (version 0.0.4).
  Each worker is asked with a `timeout` (ms); a worker that does not answer in time is left out of
  this scrape and counted in `krait_pool_worker_scrape_errors`.
  """
  @spec prometheus(atom(), timeout()) :: String.t()
  def prometheus(pool \\ Krait.Pool, timeout \\ 5_000) do
    stats = Krait.Pool.stats(pool)
    counters = counters(pool)
    {workers, errors} = fetch_workers(stats, timeout)
    IO.iodata_to_binary([pool_text(stats, counters, errors), merge(workers)])
  end

  defp counters(pool) do
    :ets.tab2list(table(pool)) |> List.keydelete(:trace, 0)
  rescue
    ArgumentError -> []
  end

  ## The pool's own families

  defp pool_text(stats, counters, errors) do
    get = fn key -> Enum.find_value(counters, 0, fn {k, v} -> if k == key, do: v end) end

    calls =
      for {{:calls, tool, outcome}, n} <- Enum.sort(counters),
          do: {[tool: tool, outcome: outcome], n}

    refused = for {{:refused, reason}, n} <- Enum.sort(counters), do: {[reason: reason], n}

    restarts = Enum.sum(Enum.map(stats.workers, & &1.restarts))

    [
      family(
        "krait_pool_calls_total",
        "counter",
        "Calls made through the pool, by tool and outcome",
        calls
      ),
      family("krait_pool_queue_length", "gauge", "Callers waiting for a worker", [
        {[], stats.queue_length}
      ]),
      wait_histogram(get),
      family(
        "krait_pool_checkouts_refused_total",
        "counter",
        "Checkouts refused, by reason",
        refused
      ),
      family("krait_pool_worker_restarts_total", "counter", "Worker restarts", [{[], restarts}]),
      family(
        "krait_pool_workers_recycled_total",
        "counter",
        "Workers replaced by the pool's recycle limits, by reason",
        for(r <- Krait.Pool.Recycle.reasons(), do: {[reason: r], get.({:recycled, r})})
      ),
      family("krait_pool_workers", "gauge", "Workers by state", [
        {[state: "ready"], stats.idle},
        {[state: "busy"], stats.busy},
        {[state: "starting"], stats.starting}
      ]),
      family(
        "krait_pool_worker_scrape_errors",
        "gauge",
        "Workers whose metrics this scrape could not fetch",
        [{[], errors}]
      )
    ]
  end

  defp wait_histogram(get) do
    {buckets, _} =
      @wait_buckets
      |> Enum.with_index()
      |> Enum.map_reduce(0, fn {le, i}, acc ->
        acc = acc + get.({:wait_bucket, i})
        {{[le: float(le)], acc}, acc}
      end)

    count = get.(:wait_count)

    [
      "# HELP krait_pool_queue_wait_seconds Time a checkout took to get a worker\n",
      "# TYPE krait_pool_queue_wait_seconds histogram\n",
      for(
        {labels, n} <- buckets ++ [{[le: "+Inf"], count}],
        do: sample("krait_pool_queue_wait_seconds_bucket", labels, n)
      ),
      sample("krait_pool_queue_wait_seconds_sum", [], get.(:wait_sum_us) / 1_000_000),
      sample("krait_pool_queue_wait_seconds_count", [], count)
    ]
  end

  defp family(name, type, help, samples) do
    [
      "# HELP #{name} #{help}\n",
      "# TYPE #{name} #{type}\n",
      Enum.map(samples, fn {labels, value} -> sample(name, labels, value) end)
    ]
  end

  defp sample(name, [], value), do: [name, " ", number(value), "\n"]

  defp sample(name, labels, value) do
    pairs = Enum.map_join(labels, ",", fn {k, v} -> "#{k}=\"#{escape(to_string(v))}\"" end)
    [name, "{", pairs, "} ", number(value), "\n"]
  end

  defp float(x) when is_float(x), do: :erlang.float_to_binary(x, [:short])

  defp number(n) when is_integer(n), do: Integer.to_string(n)
  defp number(n) when is_float(n), do: :erlang.float_to_binary(n, [:short])

  # label values: backslash, double quote and newline are escaped
  defp escape(text),
    do:
      text
      |> String.replace("\\", "\\\\")
      |> String.replace("\"", "\\\"")
      |> String.replace("\n", "\\n")

  ## The workers' families

  defp fetch_workers(stats, timeout) do
    request = Krait.Proto.MetricsRequest.encode(%Krait.Proto.MetricsRequest{})

    ready = Enum.filter(stats.workers, &(&1.status in [:idle, :busy] and is_pid(&1.pid)))

    results =
      ready
      |> Task.async_stream(&fetch(&1, request, timeout),
        timeout: timeout + 1_000,
        on_timeout: :kill_task
      )
      |> Enum.zip(ready)
      |> Enum.map(fn
        {{:ok, {:ok, text}}, w} -> {:ok, w.id, text}
        _ -> :error
      end)

    {for({:ok, id, text} <- results, do: {id, text}), Enum.count(results, &(&1 == :error))}
  end

  defp fetch(worker, request, timeout) do
    with {:ok, channel} <- Krait.Worker.ready_channel(worker.pid),
         {:ok, payload} <- Krait.Channel.unary(channel, @metrics_path, request, timeout) do
      {:ok, Krait.Proto.MetricsResponse.decode(payload).text}
    end
  catch
    _, _ -> :error
  end

  # The workers' expositions as one: a family's HELP and TYPE once, then every worker's samples of it,
  # each labelled with its worker_id.
  defp merge(workers) do
    {order, families} =
      Enum.reduce(workers, {[], %{}}, fn {id, text}, acc ->
        text |> families() |> Enum.reduce(acc, &add_family(&1, &2, id))
      end)

    for name <- Enum.reverse(order) do
      %{header: header, samples: samples} = families[name]
      [header, Enum.reverse(samples)]
    end
  end

  defp add_family({name, header, samples}, {order, families}, id) do
    labelled = Enum.map(samples, &label_sample(&1, id))

    case families do
      %{^name => f} ->
        {order, Map.put(families, name, %{f | samples: Enum.reverse(labelled, f.samples)})}

      _ ->
        {[name | order],
         Map.put(families, name, %{header: header, samples: Enum.reverse(labelled)})}
    end
  end

  # [{family name, header lines, sample lines}] in the order of the text; samples before any header
  # (not written by prometheus-client) form a family of their own.
  defp families(text) do
    text
    |> String.split("\n", trim: true)
    |> Enum.chunk_while(
      nil,
      fn line, acc ->
        case {line, acc} do
          {"# HELP " <> rest, nil} ->
            {:cont, {name_of(rest), [line <> "\n"], []}}

          {"# HELP " <> rest, {name, header, samples}} ->
            {:cont, {name, header, samples}, {name_of(rest), [line <> "\n"], []}}

          {"#" <> _, {name, header, samples}} ->
            {:cont, {name, header ++ [line <> "\n"], samples}}

          {"#" <> _, nil} ->
            {:cont, nil}

          {_, nil} ->
            {:cont, {"", [], [line]}}

          {_, {name, header, samples}} ->
            {:cont, {name, header, [line | samples]}}
        end
      end,
      fn
        nil -> {:cont, nil}
        acc -> {:cont, acc, nil}
      end
    )
    |> Enum.map(fn {name, header, samples} -> {name, header, Enum.reverse(samples)} end)
  end

  defp name_of(rest), do: rest |> String.split(" ", parts: 2) |> hd()

  defp label_sample(line, id) do
    label = ~s(worker_id="#{escape(id)}")

    case :binary.match(line, ["{", " "]) do
      {at, 1} ->
        {name, rest} = String.split_at(line, at)

        case rest do
          "{}" <> tail -> [name, "{", label, "}", tail, "\n"]
          "{" <> tail -> [name, "{", label, ",", tail, "\n"]
          _ -> [name, "{", label, "}", rest, "\n"]
        end

      :nomatch ->
        [line, "\n"]
    end
  end
end
