defmodule Krait.Worker do
  @moduledoc """
  One Python worker: owns its OS process (through a Port) and its gRPC connection.

  Life of a worker:

    1. spawns `python -m python_worker serve --adapter A --port 0 --worker-id ID` through a Port. The
       Python process exits by itself when its stdin closes, so it never outlives this Port, or the BEAM;
    2. reads the process's output line by line: the `KRAIT_READY {json}` line gives the port to connect
       to; every other line (Python's logging goes to the same pipe) is logged through `Logger` with
       `worker_id` metadata;
    3. connects (`Krait.GRPC.Connection`, linked) and tells the pool `{:krait_worker_ready, pid, info}`;
    4. pings the worker every `health_interval` ms; after `health_failures` pings in a row without an
       answer within `health_timeout` ms it kills the process (SIGKILL) and stops, so a hung tool cannot
       silently take a worker out of the pool;
    5. stops when the process exits or the connection closes; on shutdown it sends SIGTERM and, if the
       process has not exited after `shutdown_grace` ms, SIGKILL.

  The pool's scheduler monitors each worker and starts a replacement when one stops.
  """

  use GenServer, restart: :temporary
  require Logger

  @ping_path "/krait.v1.ToolWorker/Ping"
  @ready_prefix "KRAIT_READY "
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
      health_failures: 0
    }

    {:ok, state, {:continue, :spawn}}
  end

  @impl true
  def handle_continue(:spawn, state) do
    %{opts: opts} = state

    args =
      ["-m", "python_worker", "serve", "--adapter", opts.adapter, "--port", "0"] ++
        ["--host", opts.host, "--worker-id", state.id] ++ opts.worker_args

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

  @impl true
  def handle_info({port, {:data, {:noeol, part}}}, %{port: port} = state) do
    {:noreply, %{state | partial: state.partial <> part}}
  end

  def handle_info({port, {:data, {:eol, line}}}, %{port: port} = state) do
    line = state.partial <> line
    state = %{state | partial: ""}

    case line do
      @ready_prefix <> json when state.status == :starting -> ready(state, json)
      _ -> {:noreply, log_output(state, line)}
    end
  end

  def handle_info({port, {:exit_status, code}}, %{port: port} = state) do
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
  def terminate(_reason, state) do
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
      host: state.opts.host,
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

  defp log_output(state, line) do
    {level, message} = parse_line(line)
    Logger.log(level, "[#{state.id}] " <> message)
    tail = :queue.in(line, state.tail)

    if state.tail_len >= @tail_lines,
      do: %{state | tail: :queue.drop(tail)},
      else: %{state | tail: tail, tail_len: state.tail_len + 1}
  end

  # Python's logging format is "date time LEVEL [worker_id] logger: message": its level becomes the
  # Logger level, and its timestamp and worker id give way to Logger's own. Anything else (prints,
  # traceback lines) is logged as is at :info.
  defp parse_line(line) do
    case Regex.run(~r/^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (?:\[[^\]]*\] )?(.*)$/s, line,
           capture: :all_but_first
         ) do
      ["DEBUG", message] -> {:debug, message}
      ["INFO", message] -> {:info, message}
      ["WARNING", message] -> {:warning, message}
      [_, message] -> {:error, message}
      nil -> {:info, line}
    end
  end

  defp tail_text(%{tail_len: 0}), do: ""

  defp tail_text(state) do
    lines = state.tail |> :queue.to_list() |> Enum.take(-@tail_shown)
    "; last output:\n" <> Enum.join(lines, "\n")
  end

  ## Stopping the OS process

  defp stop_process(%{port: nil}), do: :ok

  defp stop_process(%{port: port, os_pid: os_pid, opts: opts}) do
    signal(os_pid, "TERM")

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      opts.shutdown_grace ->
        signal(os_pid, "KILL")
        # Closing the Port closes Python's stdin as well.
        catch_port_close(port)
    end
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

  defp signal(os_pid, sig) do
    System.cmd("kill", ["-#{sig}", Integer.to_string(os_pid)], stderr_to_stdout: true)
    :ok
  end

  defp env_pair({k, v}) when is_nil(v) or v == false, do: {to_charlist(k), false}
  defp env_pair({k, v}), do: {to_charlist(k), to_charlist(v)}
end
