defmodule Krait.Pool.Events do
  @moduledoc """
  What a pool's scheduler (`Krait.Pool.Scheduler`) tells the world about its workers' lives: the
  log lines, telemetry events (`Krait.Telemetry`) and metrics of a worker that is ready, due for
  recycling, recycled or down. No decision is made here.
  """

  require Logger

  @doc "Worker `wid` of pool `name` is ready (`info`: what it reported, with its OS pid)."
  @spec ready(term(), String.t(), map()) :: :ok
  def ready(name, wid, info) do
    Logger.info("Krait worker #{wid} ready (os pid #{info.os_pid})", worker_id: wid)
    Krait.Telemetry.worker_up(name, wid, info.os_pid)
    :ok
  end

  @doc """
  Worker `w` (`wid`) is due for recycling for `reason` at `now`; `starting`: the worker whose
  replacement is starting already (its own waits for it), or nil.
  """
  @spec recycling(term(), String.t(), map(), atom(), String.t() | nil, integer()) :: :ok
  def recycling(name, wid, w, reason, starting, now) do
    Logger.info(
      "Krait worker #{wid} is due for recycling (#{reason}; #{Krait.Pool.Recycle.due_text(reason, w, now)}); " <>
        if(starting,
          do: "its replacement starts once #{starting}'s is ready",
          else: "starting its replacement"
        ),
      worker_id: wid
    )

    Krait.Telemetry.worker_recycling(name, wid, reason, w.given, w.rss_mb)
    :ok
  end

  @doc "Replaced worker `w` (`wid`) has stopped at `now`: its lifetime and calls are recorded."
  @spec recycled(term(), String.t(), map(), integer()) :: :ok
  def recycled(name, wid, w, now) do
    lifetime = if w.ready_at, do: now - w.ready_at, else: 0
    Krait.Telemetry.worker_recycled(name, wid, w.recycle, lifetime, w.calls)
    Krait.Metrics.recycled(name, w.recycle)
    :ok
  end

  @doc """
  Worker `w` (`wid`) went down (`reason`, its last `output` lines): telemetry, and a log line
  unless it was a slot worker's failed start (logged once, with its backoff, by the scheduler).
  """
  @spec down(term(), String.t(), map(), term(), [String.t()]) :: :ok
  def down(name, wid, w, reason, output) do
    cond do
      w.status == :retiring ->
        Krait.Telemetry.worker_down(name, wid, reason, :retiring)

      w.successor_of != nil ->
        Krait.Telemetry.worker_down(name, wid, reason, :starting)
        error = Krait.Pool.Workers.start_error(wid, reason, output)

        Logger.error(
          "Krait worker #{wid}, replacing #{w.successor_of}, failed to start " <>
            "(#{inspect(error.reason)}); #{w.successor_of} goes on serving"
        )

      true ->
        Krait.Telemetry.worker_down(name, wid, reason, w.status)

        if w.status != :starting,
          do:
            Logger.warning("Krait worker #{wid} exited (#{inspect(reason)}); restarting",
              worker_id: wid
            )
    end

    :ok
  end

  @doc """
  A slot's start failed (`slot`: its record, `error`: the failure; `now_failing?`: the pool has just
  started failing): one line at `:error`, or at `:debug` as the failures go on (see
  `Krait.Pool.StartFailure`). Returns the level, for the slot's record of its last `:error` line.
  """
  @spec start_failed(map(), map(), boolean(), integer()) :: :error | :debug
  def start_failed(slot, error, now_failing?, now) do
    {level, text} = Krait.Pool.StartFailure.log_line(slot, error, now_failing?, now)
    Logger.log(level, text, worker_id: error.worker_id)
    level
  end
end
