defmodule Krait.Observability.TracingTest do
  # W3C trace context from Elixir into a real Python worker, over the link and over gRPC: the worker's
  # span for the call (OpenTelemetry's SDK with the in-memory exporter, in tests/fixtures/traced.py)
  # is a child of the caller's traceparent.
  use ExUnit.Case, async: false

  import Krait.TestHelpers

  @moduletag timeout: 60_000
  @traced "tests.fixtures.traced:TracedAdapter"

  defp traceparent do
    trace_id = Base.encode16(:rand.bytes(16), case: :lower)
    parent_id = Base.encode16(:rand.bytes(8), case: :lower)
    {"00-#{trace_id}-#{parent_id}-01", trace_id, parent_id}
  end

  defp span!(pool, name, trace_id) do
    {:ok, spans} = Krait.execute("spans", %{}, pool: pool)
    [span] = Enum.filter(spans, &(&1["name"] == name and &1["trace_id"] == trace_id))
    span
  end

  for transport <- [:link, :grpc] do
    test "a call's span in the worker is a child of its traceparent (#{transport})" do
      pool = start_pool!(adapter: @traced, size: 1, transport: unquote(transport))
      {header, trace_id, parent_id} = traceparent()

      context = %{"traceparent" => header, "tracestate" => "vendor=x"}
      assert {:ok, ^trace_id} = Krait.execute("work", %{}, pool: pool, trace_context: context)
      span = span!(pool, "krait.tool work", trace_id)
      assert span["parent_id"] == parent_id
      assert span["attributes"]["krait.tool"] == "work"

      # a stream too
      {header, trace_id, parent_id} = traceparent()

      assert [_, _, _] =
               Krait.stream("ticks", %{count: 2}, pool: pool, trace_context: header)
               |> Enum.to_list()

      assert span!(pool, "krait.tool ticks", trace_id)["parent_id"] == parent_id
    end
  end

  test "a pool with trace: true starts a trace for each call; events and Logger carry its id" do
    pool = start_pool!(adapter: @traced, size: 1, trace: true)
    Krait.Telemetry.subscribe(self())
    on_exit(fn -> Krait.Telemetry.unsubscribe(self()) end)

    assert {:ok, trace_id} = Krait.execute("work", %{}, pool: pool)
    assert trace_id =~ ~r/\A[0-9a-f]{32}\z/
    assert_receive {:krait_event, [:krait, :call, :stop], _, %{pool: ^pool, trace_id: ^trace_id}}
    assert span!(pool, "krait.tool work", trace_id)["parent_id"] =~ ~r/\A[0-9a-f]{16}\z/
  end

  test "without a trace context or trace: true, the worker starts its own trace" do
    pool = start_pool!(adapter: @traced, size: 1)
    assert {:ok, trace_id} = Krait.execute("work", %{}, pool: pool)
    assert span!(pool, "krait.tool work", trace_id)["parent_id"] == nil
  end

  test "a malformed trace context is refused before anything runs" do
    assert {:error, %Krait.Error{category: :invalid_argument, message: message}} =
             Krait.execute("work", %{}, pool: :no_such_pool, trace_context: "00-abc")

    assert message =~ "traceparent must be 00-<32 hex>-<16 hex>-<2 hex>"

    assert {:error, %Krait.Error{category: :invalid_argument}} =
             Krait.execute("work", %{}, pool: :no_such_pool, trace_context: 42)
  end
end
