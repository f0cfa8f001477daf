defmodule Krait.Telemetry do
  @moduledoc """
  Krait's events, emitted in one place: through `:telemetry` when the application has it (the
  library every Elixir library reports through), and counted in the pool's Prometheus metrics
  (`Krait.Metrics`) either way.

  | event | measurements | metadata |
  |---|---|---|
  | `[:krait, :call, :start]` | `system_time`, `monotonic_time` | `pool`, `tool`, `call_id`, `session_id`, `kind`, `trace_id` (nil when untraced) |
  | `[:krait, :call, :stop]` | `duration` (native units), `monotonic_time` | the start's, `outcome` (`:ok` or the error category), `error` (a `Krait.Error` or nil) |
  | `[:krait, :call, :exception]` | `duration`, `monotonic_time` | the start's, `kind`, `reason`, `stacktrace` |
  | `[:krait, :call, :chunk]` | `messages`, `bytes` (stream messages taken at once; a message holds one or more chunks) | `pool`, `tool`, `call_id` (only with `chunk_events: true` on the call) |
  | `[:krait, :pool, :checkout]` | `wait` (native units) | `pool`, `session_id`, `result` (`:ok` or the refusal reason), `worker_id` |
  | `[:krait, :pool, :queue_timeout]` | `wait` | `pool`, `session_id` |
  | `[:krait, :worker, :up]` | `system_time` | `pool`, `worker_id`, `os_pid` |
  | `[:krait, :worker, :down]` | `system_time` | `pool`, `worker_id`, `reason`, `status` (what it was doing; `:retiring` for a recycled worker) |
  | `[:krait, :worker, :recycling]` | `system_time`, `calls` (given so far), `rss_mb` (nil unless watched) | `pool`, `worker_id`, `reason` (`:calls`, `:age`, `:rss_mb`): the worker is due and its replacement starts |
  | `[:krait, :worker, :recycled]` | `system_time`, `lifetime` (ms ready), `calls` (completed) | `pool`, `worker_id`, `reason`: the replaced worker has finished its calls and stopped |

  `kind` in a call's metadata is `:unary` or `:stream`. Durations are in `System.monotonic_time/0`
  units (`System.convert_time_unit/3` turns them into ms), as `:telemetry.span/3` reports them.

  During `Krait.execute/3` and `Krait.execute_stream/4`, the caller's Logger metadata holds the
  call's `tool`, `session_id`, `call_id` (and `trace_id` when the call is traced), as the worker's
  log lines forwarded to Logger do (`Krait.Worker.Output`).

  Handlers attached with `:telemetry.attach/4` run in the process that emits: the caller's for call
  and checkout events, the pool's scheduler for worker events. A handler that raises is detached by
  `:telemetry`; keep them quick.
  """

  require Logger

  @typedoc "An event name."
  @type event :: [atom(), ...]

  # `:telemetry` is not a dependency (hex is not reachable everywhere Krait builds): used when loaded.
  @doc """
  Emits `event` with `measurements` and `metadata`: through `:telemetry.execute/3` when the
  `:telemetry` library is loaded, and to the processes registered with `subscribe/1` (this module's
  tests, and applications without `:telemetry`).
  """
  @spec emit(event(), map(), map()) :: :ok
  def emit(event, measurements, metadata) do
    if telemetry?(), do: apply(:telemetry, :execute, [event, measurements, metadata])

    case :persistent_term.get({__MODULE__, :subscribers}, []) do
      [] -> :ok
      pids -> Enum.each(pids, &send(&1, {:krait_event, event, measurements, metadata}))
    end

    :ok
  end

  @doc """
  Sends the calling process `{:krait_event, event, measurements, metadata}` for every event until it
  exits or calls `unsubscribe/0` (for tests and for applications without `:telemetry`; it touches a
  `:persistent_term`, so subscribe rarely).
  """
  @spec subscribe(pid()) :: :ok
  def subscribe(pid \\ self()) do
    pids = :persistent_term.get({__MODULE__, :subscribers}, [])

    :persistent_term.put(
      {__MODULE__, :subscribers},
      Enum.uniq([pid | Enum.filter(pids, &Process.alive?/1)])
    )
  end

  @doc "Stops sending events to `pid`."
  @spec unsubscribe(pid()) :: :ok
  def unsubscribe(pid \\ self()) do
    pids = :persistent_term.get({__MODULE__, :subscribers}, [])
    :persistent_term.put({__MODULE__, :subscribers}, List.delete(pids, pid))
  end

  @doc false
  # Whether a module is available, looked up once per node (a missing module would cost a code server
  # lookup on every call); used for the optional `:telemetry` and OpenTelemetry libraries.
  @spec available?(module(), atom(), arity()) :: boolean()
  def available?(module, function, arity) do
    key = {__MODULE__, :available, module}

    case :persistent_term.get(key, nil) do
      nil ->
        found = Code.ensure_loaded?(module) and function_exported?(module, function, arity)
        :persistent_term.put(key, found)
        found

      found ->
        found
    end
  end

  defp telemetry?, do: available?(:telemetry, :execute, 3)

  ## The events, as Krait's modules report them

  @doc false
  @spec call_start(map()) :: integer()
  def call_start(meta) do
    start = System.monotonic_time()

    emit(
      [:krait, :call, :start],
      %{system_time: System.system_time(), monotonic_time: start},
      meta
    )

    start
  end

  @doc false
  @spec call_stop(integer(), map(), term()) :: :ok
  def call_stop(start, meta, result) do
    stop = System.monotonic_time()

    {outcome, error} =
      case result do
        {:error, %Krait.Error{category: category} = e} -> {category, e}
        _ -> {:ok, nil}
      end

    Krait.Metrics.call_ended(meta.pool, meta.tool, outcome)
    measurements = %{duration: stop - start, monotonic_time: stop}
    emit([:krait, :call, :stop], measurements, Map.merge(meta, %{outcome: outcome, error: error}))
  end

  @doc false
  @spec call_exception(integer(), map(), atom(), term(), list()) :: :ok
  def call_exception(start, meta, kind, reason, stacktrace) do
    stop = System.monotonic_time()
    Krait.Metrics.call_ended(meta.pool, meta.tool, :exception)
    measurements = %{duration: stop - start, monotonic_time: stop}
    extra = %{kind: kind, reason: reason, stacktrace: stacktrace}
    emit([:krait, :call, :exception], measurements, Map.merge(meta, extra))
  end

  @doc """
  Runs `fun` (a call: returns `{:ok, _}`, `:ok` or `{:error, %Krait.Error{}}`) between a call's start
  and its stop (or exception) event.
  """
  @spec span(map(), (() -> result)) :: result when result: term()
  def span(meta, fun) do
    previous = Logger.metadata()
    Logger.metadata(logger_metadata(meta))
    start = call_start(meta)

    try do
      fun.()
    catch
      kind, reason ->
        call_exception(start, meta, kind, reason, __STACKTRACE__)
        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      result ->
        call_stop(start, meta, result)
        result
    after
      Logger.reset_metadata(previous)
    end
  end

  # what the caller's log lines carry during a call (the worker's lines carry the same: Krait.Worker.Output)
  defp logger_metadata(meta) do
    [tool: meta.tool, session_id: meta.session_id, call_id: meta.call_id] ++
      if(meta[:trace_id], do: [trace_id: meta.trace_id], else: [])
  end

  @doc false
  @spec chunk(map(), non_neg_integer(), non_neg_integer()) :: :ok
  def chunk(meta, count, bytes),
    do:
      emit(
        [:krait, :call, :chunk],
        %{messages: count, bytes: bytes},
        meta
      )

  @doc false
  @spec checkout(atom(), String.t() | nil, integer(), {:ok, map()} | {:error, term()}) :: :ok
  def checkout(pool, session_id, wait, result) do
    {reason, worker_id} =
      case result do
        {:ok, lease} -> {:ok, lease.worker_id}
        {:error, {reason, _}} -> {reason, nil}
        {:error, reason} -> {reason, nil}
      end

    Krait.Metrics.checkout(pool, reason, wait)
    meta = %{pool: pool, session_id: session_id, result: reason, worker_id: worker_id}
    emit([:krait, :pool, :checkout], %{wait: wait}, meta)

    if reason == :queue_timeout,
      do:
        emit([:krait, :pool, :queue_timeout], %{wait: wait}, %{pool: pool, session_id: session_id}),
      else: :ok
  end

  @doc false
  @spec worker_up(atom(), String.t(), integer() | nil) :: :ok
  def worker_up(pool, worker_id, os_pid),
    do:
      emit([:krait, :worker, :up], %{system_time: System.system_time()}, %{
        pool: pool,
        worker_id: worker_id,
        os_pid: os_pid
      })

  @doc false
  @spec worker_recycling(atom(), String.t(), atom(), non_neg_integer(), number() | nil) :: :ok
  def worker_recycling(pool, worker_id, reason, calls, rss_mb),
    do:
      emit(
        [:krait, :worker, :recycling],
        %{system_time: System.system_time(), calls: calls, rss_mb: rss_mb},
        %{pool: pool, worker_id: worker_id, reason: reason}
      )

  @doc false
  @spec worker_recycled(atom(), String.t(), atom(), non_neg_integer(), non_neg_integer()) :: :ok
  def worker_recycled(pool, worker_id, reason, lifetime, calls),
    do:
      emit(
        [:krait, :worker, :recycled],
        %{system_time: System.system_time(), lifetime: lifetime, calls: calls},
        %{pool: pool, worker_id: worker_id, reason: reason}
      )

  @doc false
  @spec worker_down(atom(), String.t(), term(), atom()) :: :ok
  def worker_down(pool, worker_id, reason, status) do
    meta = %{pool: pool, worker_id: worker_id, reason: reason, status: status}
    emit([:krait, :worker, :down], %{system_time: System.system_time()}, meta)
  end
end
