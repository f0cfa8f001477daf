defmodule Krait.Worker do
  @moduledoc """
  One Python worker: owns its OS process (through a Port) and its gRPC connection.

  Life of a worker:

    1. spawns `python -m python_worker serve --adapter A --port 0 --worker-id ID --log-format json`
       through a Port. The Python process makes itself a process group leader and exits by itself,
       with the processes its tools started, when its stdin closes: it never outlives this Port, or
       the BEAM;
    2. reads the process's output line by line: the `KRAIT_READY {json}` line gives the port to connect
       to; each `KRAIT_LOG {json}` line is one Python log record (traceback included), logged through
       `Logger` at its level with metadata `worker_id`, and `tool`, `session_id` and `call_id` when it
       comes from a call (see `docs/logging.md`); other output (prints) is logged at `:info`, lines that
       arrive together as one event (`:error` when it holds a traceback);
    3. connects (`Krait.GRPC.Connection`, linked) and tells the pool `{:krait_worker_ready, pid, info}`;
    4. pings the worker every `health_interval` ms; after `health_failures` pings in a row without an
       answer within `health_timeout` ms it kills the process (SIGKILL) and stops, so a hung tool cannot
       silently take a worker out of the pool;
    5. stops when the process exits or the connection closes; on shutdown it sends SIGTERM to the
       worker's process group and, if the worker has not exited after `shutdown_grace` ms, SIGKILL;
       whatever is left of the group is then killed.

  Whenever it stops, it first tells the pool (`{:krait_worker_down, pid, reason, last_output}`), so
  the pool stops handing it out before the cleanup runs; the scheduler also monitors each worker and
  starts a replacement when one stops.
  """

  use GenServer, restart: :temporary
  require Logger

  @ping_path "/krait.v1.ToolWorker/Ping"
  # Pool workers serve loopback only.
  @host "127.0.0.1"
  @ready_prefix "KRAIT_READY "
  @log_prefix "KRAIT_LOG "
  # Raw output lines (prints, a crash before logging is set up) arriving within this many ms of each
  # other are logged as one event.
  @raw_flush_ms 20
  # Output lines kept for the log of a failed start or an exit, and how many of them are shown.
  @tail_lines 40
  @tail_shown 12

  @doc "Starts a worker; `opts` is the map `Krait.Pool` builds (plus `:worker_id` and `:pool`)."
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "The OS pid of a worker's Python process (`nil` before it has started)."
  @spec os_pid(pid()) :: non_neg_integer() | nil
  def os_pid(worker), do: GenServer.call(worker, :os_pid)

  @impl true
  def init(opts) do
    # Trapping exits makes terminate/2 run on shutdown (to stop Python) and turns the connection's
    # exit into a message.
    Process.flag(:trap_exit, true)
    Logger.metadata(worker_id: opts.worker_id)

    state = %{
      opts: opts,
      id: opts.worker_id,
      port: nil,
      os_pid: nil,
      conn: nil,
      status: :starting,
      partial: "",
      tail: :queue.new(),
      tail_len: 0,
      startup_timer: nil,
      health: nil,
      health_failures: 0,
      raw: [],
      raw_timer: nil
    }

    {:ok, state, {:continue, :spawn}}
  end

  @impl true
  def handle_continue(:spawn, state) do
    %{opts: opts} = state

    args =
      ["-m", "python_worker", "serve", "--adapter", opts.adapter, "--port", "0"] ++
        ["--host", @host, "--worker-id", state.id] ++ opts.worker_args

    env = [{~c"PYTHONUNBUFFERED", ~c"1"} | Enum.map(opts.env, &env_pair/1)]

    port_opts = [
      :binary,
      :exit_status,
      :stderr_to_stdout,
      :use_stdio,
      :hide,
      {:line, 16_384},
      {:args, args},
      {:cd, opts.cwd},
      {:env, env}
    ]

    try do
      port = Port.open({:spawn_executable, opts.python}, port_opts)
      {:os_pid, os_pid} = Port.info(port, :os_pid)
      timer = Process.send_after(self(), :startup_timeout, opts.startup_timeout)
      Logger.debug("Krait worker #{state.id} spawned (os pid #{os_pid})")
      {:noreply, %{state | port: port, os_pid: os_pid, startup_timer: timer}}
    rescue
      e ->
        Logger.error(
          "Krait worker #{state.id} could not spawn #{opts.python}: #{Exception.message(e)}"
        )

        {:stop, {:shutdown, {:spawn_failed, e}}, state}
    end
  end

  @impl true
  def handle_call(:os_pid, _from, state), do: {:reply, state.os_pid, state}

  # A caller saw this worker's connection or process die during a call (the pool has already taken
  # it out): stop, and take the OS process down if it is still there.
  @impl true
  def handle_cast(:lost, state), do: {:stop, {:shutdown, :connection_lost}, state}

  @impl true
  def handle_info({port, {:data, {:noeol, part}}}, %{port: port} = state) do
    {:noreply, %{state | partial: state.partial <> part}}
  end

  def handle_info({port, {:data, {:eol, line}}}, %{port: port} = state) do
    line = state.partial <> line
    state = %{state | partial: ""}

    case line do
      @ready_prefix <> json when state.status == :starting -> ready(flush_raw(state), json)
      @log_prefix <> json -> {:noreply, state |> flush_raw() |> log_record(json)}
      _ -> {:noreply, raw_output(state, line)}
    end
  end

  def handle_info(:flush_raw, state), do: {:noreply, flush_raw(%{state | raw_timer: nil})}

  def handle_info({port, {:exit_status, code}}, %{port: port} = state) do
    state = flush_raw(state)
    level = if state.status == :stopping, do: :debug, else: :error

    Logger.log(
      level,
      "Krait worker #{state.id} exited with status #{code} (os pid #{state.os_pid})" <>
        tail_text(state)
    )

    {:stop, {:shutdown, {:exit_status, code}}, %{state | port: nil}}
  end

  def handle_info(:startup_timeout, %{status: :starting} = state) do
    Logger.error(
      "Krait worker #{state.id} not ready after #{state.opts.startup_timeout} ms; killing it" <>
        tail_text(state)
    )

    {:stop, {:shutdown, :startup_timeout}, kill(state)}
  end

  def handle_info(:startup_timeout, state), do: {:noreply, state}

  def handle_info(:health_check, %{status: :ready, conn: conn} = state) do
    parent = self()
    ref = make_ref()
    timeout = state.opts.health_timeout

    # The ping runs in its own process so the worker keeps reading the Port meanwhile.
    pid = spawn(fn -> send(parent, {:health, ref, ping(conn, timeout)}) end)
    deadline = Process.send_after(self(), {:health_deadline, ref}, timeout + 500)
    {:noreply, %{state | health: {ref, pid, deadline}}}
  end

  def handle_info({:health, ref, result}, %{health: {ref, _pid, deadline}} = state) do
    Process.cancel_timer(deadline)
    health_result(%{state | health: nil}, result)
  end

  def handle_info({:health_deadline, ref}, %{health: {ref, pid, _}} = state) do
    Process.exit(pid, :kill)
    health_result(%{state | health: nil}, {:error, :no_answer})
  end

  def handle_info({:EXIT, conn, reason}, %{conn: conn} = state) when conn != nil do
    Logger.warning("Krait worker #{state.id}: connection closed (#{inspect(reason)})")
    {:stop, {:shutdown, :connection_closed}, %{state | conn: nil}}
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state) when port != nil do
    {:stop, {:shutdown, :port_closed}, %{state | port: nil}}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    state = flush_raw(state)
    send(state.opts.pool, {:krait_worker_down, self(), reason, :queue.to_list(state.tail)})
    stop_process(%{state | status: :stopping})
    :ok
  end

  ## Startup

  defp ready(state, json) do
    Process.cancel_timer(state.startup_timer)

    with {:ok, %{"port" => tcp_port}} <- Krait.JSON.decode(json),
         {:ok, conn} <- connect(state, tcp_port) do
      info = %{worker_id: state.id, conn: conn, os_pid: state.os_pid, port: tcp_port}
      send(state.opts.pool, {:krait_worker_ready, self(), info})
      schedule_health(state)
      {:noreply, %{state | conn: conn, status: :ready}}
    else
      error ->
        Logger.error("Krait worker #{state.id} could not connect: #{inspect(error)}")
        {:stop, {:shutdown, {:connect_failed, error}}, state}
    end
  end

  defp connect(state, tcp_port) do
    Krait.GRPC.Connection.start_link(
      host: @host,
      port: tcp_port,
      connect_timeout: state.opts.connect_timeout
    )
  end

  ## Health

  defp ping(conn, timeout) do
    request = Krait.Proto.PingRequest.encode(%Krait.Proto.PingRequest{message: "health"})

    case Krait.GRPC.Connection.unary(conn, @ping_path, request, timeout: timeout, metadata: %{}) do
      {:ok, _} -> :ok
      {:error, error} -> {:error, error}
    end
  catch
    :exit, reason -> {:error, {:exit, reason}}
  end

  defp health_result(state, :ok) do
    schedule_health(state)
    {:noreply, %{state | health_failures: 0}}
  end

  defp health_result(state, {:error, reason}) do
    failures = state.health_failures + 1
    max = state.opts.health_failures

    if failures >= max do
      Logger.error(
        "Krait worker #{state.id} unresponsive (#{failures} health checks failed, last: " <>
          "#{inspect(reason)}); killing os pid #{state.os_pid}"
      )

      {:stop, {:shutdown, :unresponsive}, kill(state)}
    else
      Logger.warning("Krait worker #{state.id} health check failed: #{inspect(reason)}")
      schedule_health(state)
      {:noreply, %{state | health_failures: failures}}
    end
  end

  defp schedule_health(%{opts: %{health_interval: :infinity}}), do: :ok

  defp schedule_health(%{opts: %{health_interval: interval}}),
    do: Process.send_after(self(), :health_check, interval)

  ## Output

  # One Python log record: {"level", "logger", "message", "exception"?, "worker_id", "tool"?,
  # "session_id"?, "call_id"?}.
  defp log_record(state, json) do
    case Krait.JSON.decode(json) do
      {:ok, %{"message" => message} = record} when is_binary(message) ->
        text =
          case record["exception"] do
            exc when is_binary(exc) and exc != "" -> message <> "\n" <> exc
            _ -> message
          end

        metadata =
          for {key, meta} <- [{"tool", :tool}, {"session_id", :session_id}, {"call_id", :call_id}],
              is_binary(record[key]) and record[key] != "",
              do: {meta, record[key]}

        Logger.log(
          python_level(record["level"]),
          text,
          [python_logger: record["logger"]] ++ metadata
        )

        remember(state, text)

      _ ->
        raw_output(state, @log_prefix <> json)
    end
  end

  defp python_level("DEBUG"), do: :debug
  defp python_level("INFO"), do: :info
  defp python_level("WARNING"), do: :warning
  defp python_level("CRITICAL"), do: :critical
  defp python_level(_), do: :error

  defp raw_output(state, line) do
    timer = state.raw_timer || Process.send_after(self(), :flush_raw, @raw_flush_ms)
    %{state | raw: [line | state.raw], raw_timer: timer}
  end

  defp flush_raw(%{raw: []} = state), do: state

  defp flush_raw(state) do
    if state.raw_timer, do: Process.cancel_timer(state.raw_timer)
    text = state.raw |> Enum.reverse() |> Enum.join("\n")

    level =
      if String.contains?(text, "Traceback (most recent call last)"), do: :error, else: :info

    Logger.log(level, text)
    remember(%{state | raw: [], raw_timer: nil}, text)
  end

  # The last output, for the log of a failed start or an exit and for the pool's `last_error`.
  defp remember(state, text) do
    tail = :queue.in(text, state.tail)

    if state.tail_len >= @tail_lines,
      do: %{state | tail: :queue.drop(tail)},
      else: %{state | tail: tail, tail_len: state.tail_len + 1}
  end

  defp tail_text(%{tail_len: 0}), do: ""

  defp tail_text(state) do
    lines = state.tail |> :queue.to_list() |> Enum.take(-@tail_shown)
    "; last output:\n" <> Enum.join(lines, "\n")
  end

  ## Stopping the OS process

  # The process has exited (and been reaped): only its group can be left, e.g. a tool's child after
  # the worker was SIGKILLed. Only the group is signalled, as the pid itself may be reused by now.
  defp stop_process(%{port: nil, os_pid: nil}), do: :ok
  defp stop_process(%{port: nil, os_pid: os_pid}), do: signal_group(os_pid, "KILL")

  defp stop_process(%{port: port, os_pid: os_pid, opts: opts}) do
    signal(os_pid, "TERM")

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      opts.shutdown_grace ->
        # Closing the Port closes Python's stdin as well.
        catch_port_close(port)
    end

    # Whatever is left of the group (a child that ignored SIGTERM) goes now.
    signal_group(os_pid, "KILL")
  end

  defp kill(%{port: nil} = state), do: state

  defp kill(%{port: port, os_pid: os_pid} = state) do
    signal(os_pid, "KILL")
    catch_port_close(port)
    %{state | port: nil}
  end

  defp catch_port_close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  defp signal(nil, _), do: :ok

  # The worker leads its own process group (its pgid is its pid): signalling the group reaches the
  # processes its tools started too. The pid itself is signalled as well, for a worker killed before
  # it could set up its group.
  defp signal(os_pid, sig) do
    pid = Integer.to_string(os_pid)
    System.cmd("kill", ["-#{sig}", "--", "-" <> pid, pid], stderr_to_stdout: true)
    :ok
  end

  defp signal_group(os_pid, sig) do
    System.cmd("kill", ["-#{sig}", "--", "-#{os_pid}"], stderr_to_stdout: true)
    :ok
  end

  defp env_pair({k, v}) when is_nil(v) or v == false, do: {to_charlist(k), false}
  defp env_pair({k, v}), do: {to_charlist(k), to_charlist(v)}
end
