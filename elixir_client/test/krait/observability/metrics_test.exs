defmodule Krait.Observability.MetricsTest do
  # A pool's Prometheus metrics: Krait.Metrics.prometheus/1 with its workers' metrics fetched over the
  # link, and the pool's /metrics endpoint scraped by a real Prometheus server.
  use ExUnit.Case, async: false

  import Krait.TestHelpers
  alias Krait.TestPrometheus

  @moduletag timeout: 90_000

  defp samples(text) do
    for line <- String.split(text, "\n", trim: true),
        not String.starts_with?(line, "#"),
        into: %{} do
      [series, value] = String.split(line, " ", parts: 2)
      {series, value |> String.trim() |> Float.parse() |> elem(0)}
    end
  end

  defp make_calls(pool) do
    for _ <- 1..3, do: {:ok, _} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
    :ok = Krait.execute_stream("stream_numbers", %{count: 4}, fn _ -> :ok end, pool: pool)
    {:error, _} = Krait.execute("fail", %{}, pool: pool)
    {:error, _} = Krait.execute("no_such_tool", %{}, pool: pool)
  end

  test "prometheus/1: the pool's families and its workers', labelled worker_id" do
    pool = start_pool!(size: 2)
    make_calls(pool)
    text = Krait.Metrics.prometheus(pool)
    s = samples(text)

    assert s[~s(krait_pool_calls_total{tool="add",outcome="ok"})] == 3
    assert s[~s(krait_pool_calls_total{tool="stream_numbers",outcome="ok"})] == 1
    assert s[~s(krait_pool_calls_total{tool="fail",outcome="python"})] == 1
    assert s[~s(krait_pool_calls_total{tool="_unknown",outcome="not_found"})] == 1
    assert s["krait_pool_queue_wait_seconds_count"] == 6
    assert s[~s(krait_pool_queue_wait_seconds_bucket{le="+Inf"})] == 6
    assert s["krait_pool_queue_length"] == 0
    assert s[~s(krait_pool_workers{state="ready"})] == 2
    assert s["krait_pool_worker_restarts_total"] == 0
    assert s["krait_pool_worker_scrape_errors"] == 0

    # the workers' own, one series per worker; summed over workers they count every call
    [w1, w2] = Enum.map(Krait.Pool.stats(pool).workers, & &1.id)

    worker_adds =
      for w <- [w1, w2],
          do: Map.get(s, ~s(krait_tool_calls_total{worker_id="#{w}",status="OK",tool="add"}), 0)

    assert Enum.sum(worker_adds) == 3
    assert Map.has_key?(s, ~s(process_resident_memory_bytes{worker_id="#{w1}"}))
    assert Map.has_key?(s, ~s(process_resident_memory_bytes{worker_id="#{w2}"}))
    # each family's HELP once, however many workers
    assert length(Regex.scan(~r/^# HELP krait_tool_calls_total /m, text)) == 1
  end

  test "a call stopped by its deadline over the link is counted DEADLINE_EXCEEDED by its worker" do
    pool = start_pool!(size: 1)

    {:error, %Krait.Error{category: :timeout}} =
      Krait.execute("slow_tool", %{seconds: 30}, pool: pool, timeout: 300)

    {:error, %Krait.Error{category: :timeout}} =
      Krait.execute_stream("endless_stream", %{interval_ms: 20}, fn _ -> :ok end,
        pool: pool,
        timeout: 300
      )

    [w] = Enum.map(Krait.Pool.stats(pool).workers, & &1.id)

    series = fn tool ->
      ~s(krait_tool_calls_total{worker_id="#{w}",status="DEADLINE_EXCEEDED",tool="#{tool}"})
    end

    assert eventually(fn ->
             s = samples(Krait.Metrics.prometheus(pool))
             s[series.("slow_tool")] == 1 and s[series.("endless_stream")] == 1
           end)
  end

  test "refused checkouts and restarts are counted" do
    pool = start_pool!(size: 1, max_queue: 0)
    test = self()

    busy =
      Task.async(fn ->
        Krait.execute_stream("blocking_stream", %{seconds: 20}, fn _ -> send(test, :busy) end,
          pool: pool
        )
      end)

    assert_receive :busy, 5_000

    {:error, %Krait.Error{details: %{reason: :pool_saturated}}} =
      Krait.execute("add", %{a: 1, b: 1}, pool: pool)

    Task.shutdown(busy, :brutal_kill)

    [os_pid] = worker_os_pids(pool)
    os_kill(os_pid, "KILL")

    eventually(
      fn -> Krait.Pool.stats(pool).ready == 1 and os_pid not in worker_os_pids(pool) end,
      20_000
    )

    s = samples(Krait.Metrics.prometheus(pool))
    assert s[~s(krait_pool_checkouts_refused_total{reason="pool_saturated"})] == 1
    assert s["krait_pool_worker_restarts_total"] == 1
  end

  @tag :tmp_dir
  test "a real Prometheus scrapes the pool's /metrics endpoint", %{tmp_dir: dir} do
    pool = start_pool!(size: 2, metrics_port: 0)
    port = Krait.Metrics.HTTP.port(pool)
    assert is_integer(port) and port > 0

    token = Krait.Pool.stats(pool).token
    assert is_binary(token) and byte_size(token) == 43
    auth = [{~c"authorization", String.to_charlist("Bearer " <> token)}]
    metrics = "http://127.0.0.1:#{port}/metrics"

    # any local user reaches a loopback port: without the pool's token, nothing (and not at once)
    started = System.monotonic_time(:millisecond)
    {:ok, {{_, 401, _}, headers, _}} = TestPrometheus.get(metrics)
    assert System.monotonic_time(:millisecond) - started >= 900
    assert {~c"www-authenticate", ~c"Bearer"} in headers
    {:ok, {{_, 401, _}, _, _}} = TestPrometheus.get(metrics, [{~c"authorization", ~c"Bearer x"}])
    {:ok, {{_, 401, _}, _, _}} = TestPrometheus.get("http://127.0.0.1:#{port}/other")

    {:ok, {{_, 404, _}, _, _}} = TestPrometheus.get("http://127.0.0.1:#{port}/other", auth)
    {:ok, {{_, 200, _}, headers, _}} = TestPrometheus.get(metrics, auth)
    assert {~c"content-type", ~c"text/plain; version=0.0.4; charset=utf-8"} in headers

    make_calls(pool)
    credentials = Path.join(dir, "token")
    File.write!(credentials, token)
    File.chmod!(credentials, 0o600)

    url = TestPrometheus.start!(%{"krait_pool" => {"127.0.0.1:#{port}", credentials}}, dir)
    value = &TestPrometheus.value(url, &1)

    assert eventually(
             fn -> value.(~s(krait_pool_calls_total{tool="add",outcome="ok"})) == 3.0 end,
             30_000
           )

    assert value.(~s|sum(krait_tool_calls_total{job="krait_pool",tool="add",status="OK"})|) == 3.0
    assert value.(~s|sum(krait_tool_duration_seconds_count{tool="stream_numbers"})|) == 1.0
    assert value.("krait_pool_queue_wait_seconds_count") == 6.0
    assert value.("count(krait_calls_in_flight)") == 2.0

    {:ok, _} = Krait.execute("add", %{a: 1, b: 1}, pool: pool)

    assert eventually(
             fn -> value.(~s(krait_pool_calls_total{tool="add",outcome="ok"})) == 4.0 end,
             30_000
           )
  end
end
