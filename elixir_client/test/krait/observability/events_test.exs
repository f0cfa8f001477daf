defmodule Krait.Observability.EventsTest do
  # The shapes of Krait's events (Krait.Telemetry) for real calls on a real pool: a unary call, a
  # stream (callback and lazy), an error, a queue timeout, a worker crash. Events are received through
  # Krait.Telemetry.subscribe/1, the same emission point that calls :telemetry when it is loaded.
  use ExUnit.Case, async: false

  import Krait.TestHelpers
  require Logger

  @moduletag timeout: 60_000

  setup do
    Krait.Telemetry.subscribe(self())
    on_exit(fn -> Krait.Telemetry.unsubscribe(self()) end)
    :ok
  end

  defp event!(name, match_meta, timeout \\ 5_000) do
    receive do
      {:krait_event, ^name, measurements, meta} = msg ->
        if Enum.all?(match_meta, fn {k, v} -> Map.get(meta, k) == v end),
          do: {measurements, meta},
          else: event!(name, match_meta, timeout) |> tap(fn _ -> send(self(), msg) end)
    after
      timeout -> flunk("no #{inspect(name)} event with #{inspect(match_meta)}")
    end
  end

  test "a unary call: checkout, start, stop with its duration and outcome" do
    pool = start_pool!(size: 1)
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, session_id: "s-1")

    {m, meta} = event!([:krait, :pool, :checkout], %{pool: pool})
    assert is_integer(m.wait) and m.wait >= 0
    assert %{result: :ok, session_id: "s-1", worker_id: "" <> _} = meta

    {m, start} = event!([:krait, :call, :start], %{pool: pool})
    assert is_integer(m.system_time) and is_integer(m.monotonic_time)
    assert %{tool: "add", session_id: "s-1", kind: :unary, call_id: "" <> _} = start

    {m, stop} = event!([:krait, :call, :stop], %{pool: pool})
    assert m.duration > 0
    assert %{tool: "add", outcome: :ok, error: nil, kind: :unary} = stop
    assert stop.call_id == start.call_id
  end

  test "an error: stop carries the error's category and the error" do
    pool = start_pool!(size: 1)
    assert {:error, %Krait.Error{category: :python}} = Krait.execute("fail", %{}, pool: pool)
    {_m, stop} = event!([:krait, :call, :stop], %{pool: pool})
    assert %{tool: "fail", outcome: :python, error: %Krait.Error{category: :python}} = stop

    assert {:error, %Krait.Error{category: :not_found}} = Krait.execute("nope", %{}, pool: pool)

    assert {_m, %{outcome: :not_found}} =
             event!([:krait, :call, :stop], %{pool: pool, tool: "nope"})
  end

  test "streams: execute_stream and stream/3 report start and stop (ok and failed)" do
    pool = start_pool!(size: 1)
    assert :ok = Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> :ok end, pool: pool)
    {_m, start} = event!([:krait, :call, :start], %{pool: pool})
    assert %{tool: "stream_numbers", kind: :stream} = start
    assert {_m, %{outcome: :ok}} = event!([:krait, :call, :stop], %{pool: pool})

    assert [_, _, _, _] =
             Krait.stream("stream_numbers", %{count: 3}, pool: pool) |> Enum.to_list()

    assert {_m, %{kind: :stream}} = event!([:krait, :call, :start], %{pool: pool})
    assert {m, %{outcome: :ok}} = event!([:krait, :call, :stop], %{pool: pool})
    assert m.duration > 0

    assert_raise Krait.Error, fn ->
      Krait.stream("failing_stream", %{fail_at: 1}, pool: pool) |> Enum.to_list()
    end

    assert {_m, %{outcome: :python, error: %Krait.Error{}}} =
             event!([:krait, :call, :stop], %{pool: pool, tool: "failing_stream"})
  end

  test "chunk events: only with chunk_events: true, one per batch of messages" do
    pool = start_pool!(size: 1)
    :ok = Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> :ok end, pool: pool)
    refute_received {:krait_event, [:krait, :call, :chunk], _, _}

    :ok =
      Krait.execute_stream("stream_numbers", %{count: 3}, fn _ -> :ok end,
        pool: pool,
        chunk_events: true
      )

    {m, meta} = event!([:krait, :call, :chunk], %{pool: pool})
    assert m.messages >= 1 and m.bytes > 0
    assert %{tool: "stream_numbers", call_id: "" <> _} = meta

    [_ | _] =
      Krait.stream("stream_numbers", %{count: 3}, pool: pool, chunk_events: true)
      |> Enum.to_list()

    assert {_m, %{tool: "stream_numbers"}} = event!([:krait, :call, :chunk], %{pool: pool})
  end

  test "a queue timeout: the checkout is refused, queue_timeout and the call's stop say so" do
    pool = start_pool!(size: 1)
    test = self()

    busy =
      Task.async(fn ->
        Krait.execute_stream("blocking_stream", %{seconds: 20}, fn _ -> send(test, :busy) end,
          pool: pool
        )
      end)

    assert_receive :busy, 5_000

    assert {:error, %Krait.Error{category: :pool, details: %{reason: :queue_timeout}}} =
             Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 100)

    assert {m, %{session_id: nil}} = event!([:krait, :pool, :queue_timeout], %{pool: pool})
    assert m.wait > 0

    assert {_m, %{result: :queue_timeout, worker_id: nil}} =
             event!([:krait, :pool, :checkout], %{pool: pool, result: :queue_timeout})

    assert {_m, %{outcome: :pool}} = event!([:krait, :call, :stop], %{pool: pool, tool: "add"})
    Task.shutdown(busy, :brutal_kill)
  end

  test "a worker crash: down with its reason, then up for its replacement" do
    pool = start_pool!(size: 1)
    {_m, up} = event!([:krait, :worker, :up], %{pool: pool})
    assert %{worker_id: wid, os_pid: os_pid} = up
    assert is_integer(os_pid)
    os_kill(os_pid, "KILL")

    {m, down} = event!([:krait, :worker, :down], %{pool: pool, worker_id: wid})
    assert is_integer(m.system_time)
    assert down.status == :idle
    assert down.reason != nil
    {_m, again} = event!([:krait, :worker, :up], %{pool: pool}, 20_000)
    assert again.worker_id != wid
  end

  test "Logger metadata during a call: tool, session_id and call_id" do
    pool = start_pool!(size: 1)
    test = self()

    assert :ok =
             Krait.execute_stream(
               "stream_numbers",
               %{count: 1},
               fn _ -> send(test, {:metadata, Logger.metadata()}) end,
               pool: pool,
               session_id: "s-log"
             )

    assert_receive {:metadata, meta}
    assert meta[:tool] == "stream_numbers"
    assert meta[:session_id] == "s-log"
    assert is_binary(meta[:call_id])
    # and restored after the call
    assert Logger.metadata()[:tool] == nil
  end
end
