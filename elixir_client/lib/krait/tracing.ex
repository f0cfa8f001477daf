defmodule Krait.Tracing do
  @moduledoc """
  W3C trace context for a call: the `traceparent` and `tracestate` headers sent beside `krait-call-id`
  (request metadata on the link, gRPC headers on gRPC), so that the worker's span for the call (see
  `python_worker/tracing.py`) is a child of the caller's.

  Where a call's context comes from, first found:

    1. the call option `:trace_context`: a `traceparent` string, or a map with `"traceparent"` (and
       `"tracestate"`);
    2. the caller's OpenTelemetry context, when the OpenTelemetry API (`opentelemetry_api`) is loaded
       in the application: its text-map propagator injects the headers;
    3. a new trace started by Krait, when the pool has `trace: true`.

  Otherwise nothing is sent and the worker starts a trace of its own (when it makes spans at all).
  """

  @traceparent ~r/\A00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\z/

  @typedoc "What the `:trace_context` call option takes."
  @type context :: String.t() | %{optional(String.t()) => String.t()} | nil

  @doc """
  The trace headers for a call: `{:ok, headers}` (a map, empty when the call is not traced) or
  `{:error, message}` for a malformed `:trace_context`.
  """
  @spec headers(context(), atom() | term()) ::
          {:ok, %{String.t() => String.t()}} | {:error, String.t()}
  def headers(nil, pool) do
    case from_opentelemetry() do
      %{"traceparent" => _} = headers ->
        {:ok, headers}

      _ ->
        {:ok,
         if(Krait.Metrics.tracing?(pool), do: %{"traceparent" => new_traceparent()}, else: %{})}
    end
  end

  def headers(traceparent, _pool) when is_binary(traceparent),
    do: check(%{"traceparent" => traceparent})

  def headers(%{} = context, _pool) do
    context
    |> Map.new(fn {k, v} -> {to_string(k), v} end)
    |> Map.take(["traceparent", "tracestate"])
    |> check()
  end

  def headers(other, _pool),
    do:
      {:error,
       "option :trace_context must be a traceparent string or a map, got: #{inspect(other)}"}

  @doc "The trace id (32 hex digits) in a call's trace headers, or nil."
  @spec trace_id(map()) :: String.t() | nil
  def trace_id(%{"traceparent" => traceparent}) do
    case Regex.run(@traceparent, traceparent) do
      [_, trace_id, _, _] -> trace_id
      _ -> nil
    end
  end

  def trace_id(_), do: nil

  @doc "A traceparent for a new trace (random trace and span ids, sampled)."
  @spec new_traceparent() :: String.t()
  def new_traceparent do
    hex = fn n -> n |> :rand.bytes() |> Base.encode16(case: :lower) end
    "00-#{hex.(16)}-#{hex.(8)}-01"
  end

  defp check(%{"traceparent" => tp} = headers) when is_binary(tp) do
    cond do
      not Regex.match?(@traceparent, tp) ->
        {:error,
         "option :trace_context: traceparent must be 00-<32 hex>-<16 hex>-<2 hex>, got: #{inspect(tp)}"}

      not is_binary(Map.get(headers, "tracestate", "")) ->
        {:error, "option :trace_context: tracestate must be a string"}

      true ->
        {:ok, headers}
    end
  end

  defp check(_), do: {:error, "option :trace_context needs a \"traceparent\""}

  # OpenTelemetry's Erlang API, when the application has it: not a dependency (hex is not reachable
  # everywhere Krait builds), called only when loaded.
  defp from_opentelemetry do
    if Krait.Telemetry.available?(:otel_propagator_text_map, :inject, 1) do
      apply(:otel_propagator_text_map, :inject, [[]])
      |> Map.new(fn {k, v} -> {to_string(k), to_string(v)} end)
    else
      %{}
    end
  rescue
    _ -> %{}
  end
end
