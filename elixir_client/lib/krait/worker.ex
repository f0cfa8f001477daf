defmodule Krait.Worker do
  @moduledoc """
  One of a pool's Python workers: owns its OS process, through an Erlang Port, and the channel calls
  reach it by.

  The pool reaches its workers over the **local link** by default (`transport: :link`): frames on the
  worker's own stdin/stdout (`docs/link.md`). This process owns the Port and routes each frame to its
  call's owner (`Krait.Link.Calls`; input credit to the call's input owner). Callers on this node
  write their own frames (open, credit, cancel, input items and their end, handler replies) to the
  Port, through the handle this process registers once ready (`Krait.Link.Handle`,
  `Krait.Link.Registry`): one hop fewer per call; a caller elsewhere sends them here
  (`Krait.Link`'s messages). The worker's death is one signal, the Port's exit: every open
  call fails at once and the pool drops the worker in the same step. With `transport: :grpc` the worker
  serves gRPC on a loopback port and this process connects to it (`Krait.GRPC.Connection`, linked).

  Life of a worker:

    1. spawns `python -m python_worker serve --adapter A --worker-id ID` with `--link` (or
       `--port 0 --log-format json`). The Python process leads its own process group, and exits by
       itself, with the processes its tools started, when its stdin closes: it never outlives this
       Port, or the BEAM;
    2. waits for it to be ready: a `READY` frame (link), or the `KRAIT_READY {json}` line giving the
       port to connect to (gRPC); then tells the pool `{:krait_worker_ready, pid, info}`;
    3. logs what the worker says: each Python log record is one `Logger` event at its level, traceback
       included, with metadata `worker_id`, and `tool`, `session_id`, `call_id` (and `trace_id` when
       traced) when it comes from a call (see `Krait.Worker.Output`);
    4. pings the worker every `health_interval` ms (and, when the pool recycles by memory, reads its
       RSS from `/proc/PID/status` and tells the pool); after `health_failures` pings in a row without an
       answer within `health_timeout` ms it kills the process (SIGKILL) and stops, so a hung worker cannot
       silently stay in the pool;
    5. stops when the process exits (or, over gRPC, the connection closes); on shutdown it sends SIGTERM
       to the worker's process group and, if the worker has not exited after `shutdown_grace` ms,
       SIGKILL; whatever is left of the group is then killed.

  Whenever it stops, it first tells the pool (`{:krait_worker_down, pid, reason, last_output}`), so
  the pool stops handing it out before the cleanup runs; the scheduler also monitors each worker.
  """

  use GenServer, restart: :temporary
  require Logger

  alias Krait.Link.{Calls, Frame, Registry}
  alias Krait.Worker.Output

  @ping_path Krait.Proto.path(:ping)
  # Pool workers serve loopback only.
  @host "127.0.0.1"
  @ready_prefix "KRAIT_READY "
  @log_prefix "KRAIT_LOG "
  # How often a link worker cancels calls whose caller died before it wrote their OPEN (Calls.reap/1).
  @reap_interval 5_000

  @doc "Starts a worker; `opts` is the worker map of `Krait.Pool.Config` (plus `:worker_id` and `:pool`)."
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "The OS pid of a worker's Python process (`nil` before it has started)."
  @spec os_pid(pid()) :: non_neg_integer() | nil
  def os_pid(worker), do: GenServer.call(worker, :os_pid)

  @impl true
  def init(opts) do
    # Trapping exits makes terminate/2 run on shutdown (to stop Python) and turns a gRPC connection's
    # exit into a message.
    Process.flag(:trap_exit, true)
    Logger.metadata(worker_id: opts.worker_id)

    state = %{
      opts: opts,
      id: opts.worker_id,
      transport: Map.get(opts, :transport, :link),
      port: nil,
      os_pid: nil,
      # over gRPC: the connection; over the link: nil (this process is the channel's)
      conn: nil,
      calls: nil,
      status: :starting,
      partial: "",
      # held until the worker is ready: a failed start is one line from the pool
      output: %Output{hold: true},
      stderr_file: nil,
      startup_timer: nil,
      health: nil,
      health_failures: 0
    }

    {:ok, state, {:continue, :spawn}}
  end

  @impl true
  def handle_continue(:spawn, %{opts: opts} = state) do
    env = [{~c"PYTHONUNBUFFERED", ~c"1"} | Enum.map(opts.env, &env_pair/1)] ++ token_env(opts)

    port_opts =
      [
        :binary,
        :exit_status,
        :use_stdio,
        :hide,
        {:cd, opts.cwd},
        {:env, env}
      ] ++
        transport_port_opts(state.transport)

    {executable, args, stderr_file} = command(state)
    state = %{state | stderr_file: stderr_file}

    try do
      port = Port.open({:spawn_executable, executable}, [{:args, args} | port_opts])
      {:os_pid, os_pid} = Port.info(port, :os_pid)
      timer = Process.send_after(self(), :startup_timeout, opts.startup_timeout)
      Logger.debug("Krait worker #{state.id} spawned (os pid #{os_pid})")
      calls = if state.transport == :link, do: Calls.new(port)
      {:noreply, %{state | port: port, os_pid: os_pid, startup_timer: timer, calls: calls}}
    rescue
      e ->
        # the pool's line for the failed start names the reason
        Logger.debug(
          "Krait worker #{state.id} could not spawn #{opts.python}: #{Exception.message(e)}"
        )

        {:stop, {:shutdown, {:spawn_failed, Exception.message(e)}}, state}
    end
  end

  # Over the link, stdout carries frames and the BEAM's stderr is the console: the worker's stderr
  # goes to a file instead (the shell `exec`s Python, so the os pid is Python's), read when the
  # process ends and logged through Logger. Once `python_worker` runs it sends its stderr as LOG
  # frames, so the file holds only what an interpreter that failed before that wrote.
  #
  # The file is made here, under a random name, exclusively and private (0600), and the shell only
  # appends to it: in a shared temporary directory another user's file or link at a name Krait
  # could guess would otherwise be written through, or keep the worker from starting.
  defp command(%{transport: :link, opts: opts, id: id} = state) do
    file = private_file("krait-#{id}-", ".stderr")
    {"/bin/sh", ["-c", ~s(exec 2>>"$0"; exec "$@"), file, opts.python | args(state)], file}
  end

  defp command(%{opts: opts} = state), do: {opts.python, args(state), nil}

  @doc false
  # A new empty file in the temporary directory, only ours: a random name, made exclusively, mode 0600.
  @spec private_file(String.t(), String.t()) :: String.t()
  def private_file(prefix, suffix) do
    name = prefix <> Base.url_encode64(:crypto.strong_rand_bytes(12), padding: false) <> suffix
    path = Path.join(System.tmp_dir!(), name)
    # :exclusive is O_EXCL: it fails on any existing entry, a symbolic link included
    {:ok, file} = File.open(path, [:write, :exclusive])
    File.close(file)
    :ok = File.chmod(path, 0o600)
    path
  end

  # What the process wrote to its stderr file, into the output (and the file emptied).
  defp read_stderr(%{stderr_file: nil} = state), do: state

  defp read_stderr(%{stderr_file: file} = state) do
    case File.read(file) do
      {:ok, text} when text != "" ->
        # emptied in place (the file stays ours, 0600): a restart's shell appends to a fresh one
        {:ok, io} = File.open(file, [:write])
        File.close(io)
        %{state | output: Output.stderr(state.output, text)}

      _ ->
        state
    end
  end

  defp args(%{opts: opts, id: id, transport: transport}) do
    base = ["-m", "python_worker", "serve", "--adapter", opts.adapter, "--worker-id", id]

    transport_args =
      case transport do
        :link ->
          ["--link"] ++ if(Map.get(opts, :expose_grpc, false), do: ["--port", "0"], else: [])

        :grpc ->
          ["--host", @host, "--port", "0", "--log-format", "json"]
      end

    base ++ transport_args ++ http_args(Map.get(opts, :http_port)) ++ opts.worker_args
  end

  defp http_args(nil), do: []
  defp http_args(port), do: ["--http-port", Integer.to_string(port)]

  # The link's frames are {packet, 4}; Python's own stderr stays apart (the worker sends its output as
  # LOG frames once it runs; an interpreter that fails before that writes to the BEAM's stderr). Over
  # gRPC, output is read as lines.
  defp transport_port_opts(:link), do: [{:packet, 4}]
  defp transport_port_opts(:grpc), do: [:stderr_to_stdout, {:line, 16_384}]

  @doc "The channel to a ready worker (what `Krait.Metrics` fetches its metrics through)."
  @spec ready_channel(pid()) :: {:ok, Krait.Channel.t()} | {:error, :not_ready}
  def ready_channel(worker), do: GenServer.call(worker, :channel)

  @impl true
  def handle_call(:os_pid, _from, state), do: {:reply, state.os_pid, state}

  def handle_call(:channel, _from, %{status: :ready} = state),
    do: {:reply, {:ok, channel(state)}, state}

  def handle_call(:channel, _from, state), do: {:reply, {:error, :not_ready}, state}

  # A caller saw this worker's connection or process die during a call (the pool has already taken
  # it out): stop, and take the OS process down if it is still there.
  @impl true
  def handle_cast(:lost, state), do: {:stop, {:shutdown, :connection_lost}, state}

  # The pool recycles this worker (see Krait.Pool.Recycle): it has no call left; stopping sends
  # SIGTERM, and the worker ends its sessions (on_session_end) and its adapter before it exits.
  def handle_cast({:retire, reason}, state) do
    Logger.info("Krait worker #{state.id} recycled (#{reason}); stopping it")
    {:stop, {:shutdown, {:recycled, reason}}, state}
  end

  ## The link: calls from owners, frames from the worker

  @impl true
  def handle_info(
        {:krait_open, ref, owner, method, request, timeout_ms, metadata, input_owner},
        state
      ) do
    case state.calls do
      nil ->
        refuse_open(owner, ref, "worker not running")
        {:noreply, state}

      calls ->
        calls = Calls.open(calls, ref, owner, method, request, timeout_ms, metadata, input_owner)
        {:noreply, %{state | calls: calls}}
    end
  end

  def handle_info({:krait_input, ref, batch}, %{calls: %Calls{} = calls} = state),
    do: {:noreply, %{state | calls: Calls.input(calls, ref, batch)}}

  def handle_info({:krait_input_end, ref, result}, %{calls: %Calls{} = calls} = state),
    do: {:noreply, %{state | calls: Calls.input_end(calls, ref, result)}}

  def handle_info({:krait_handler_reply, ref, reply}, %{calls: %Calls{} = calls} = state),
    do: {:noreply, %{state | calls: Calls.handler_reply(calls, ref, reply)}}

  def handle_info({:krait_ack, ref, bytes}, %{calls: %Calls{} = calls} = state),
    do: {:noreply, %{state | calls: Calls.ack(calls, ref, bytes)}}

  def handle_info({:krait_cancel, ref, reason}, %{calls: %Calls{} = calls} = state),
    do: {:noreply, %{state | calls: Calls.cancel(calls, ref, reason)}}

  def handle_info({port, {:data, packet}}, %{port: port, transport: :link} = state)
      when is_binary(packet) do
    case Frame.decode(packet) do
      {:ready, 0, payload} when state.status == :starting ->
        link_ready(state, payload, Frame.metadata(packet))

      frame ->
        {:noreply, link_frame(state, frame, packet)}
    end
  rescue
    e in Krait.Proto.DecodeError ->
      Logger.error(
        "Krait worker #{state.id}: undecodable frame (#{Exception.message(e)}); stopping it"
      )

      {:stop, {:shutdown, :protocol_error}, kill(state)}
  end

  ## Output over gRPC: lines

  def handle_info({port, {:data, {:noeol, part}}}, %{port: port} = state) do
    {:noreply, %{state | partial: state.partial <> part}}
  end

  def handle_info({port, {:data, {:eol, line}}}, %{port: port} = state) do
    line = state.partial <> line
    state = %{state | partial: ""}

    case line do
      @ready_prefix <> json when state.status == :starting ->
        grpc_ready(%{state | output: Output.flush(state.output)}, json)

      @log_prefix <> json ->
        {:noreply, %{state | output: json_record(Output.flush(state.output), json)}}

      _ ->
        {:noreply, %{state | output: Output.raw(state.output, line)}}
    end
  end

  def handle_info(:flush_raw, state),
    do: {:noreply, %{state | output: Output.flush(%{state.output | raw_timer: nil})}}

  ## The process's end

  def handle_info({port, {:exit_status, code}}, %{port: port} = state) do
    state = read_stderr(%{state | output: Output.flush(state.output), port: nil})
    state = fail_calls(state, "worker process exited with status #{code}")

    state =
      if state.status == :starting,
        do: failed_start(diagnose(state, code)),
        else: state

    # a failed start is the pool's one line (its cause, the attempt, the backoff)
    level = if state.status in [:stopping, :starting], do: :debug, else: :error

    Logger.log(
      level,
      "Krait worker #{state.id} exited with status #{code} (os pid #{state.os_pid})" <>
        Output.tail_text(state.output)
    )

    {:stop, {:shutdown, {:exit_status, code}}, state}
  end

  def handle_info(:startup_timeout, %{status: :starting} = state) do
    state = failed_start(read_stderr(state))

    Logger.debug(
      "Krait worker #{state.id} not ready after #{state.opts.startup_timeout} ms; killing it" <>
        Output.tail_text(state.output)
    )

    {:stop, {:shutdown, :startup_timeout}, kill(state)}
  end

  def handle_info(:startup_timeout, state), do: {:noreply, state}

  def handle_info(:reap_link_calls, %{calls: %Calls{} = calls} = state) do
    Process.send_after(self(), :reap_link_calls, @reap_interval)
    {:noreply, %{state | calls: Calls.reap(calls)}}
  end

  ## Health

  def handle_info(:health_check, %{status: :ready} = state) do
    report_rss(state)
    request = Krait.Proto.PingRequest.encode(%Krait.Proto.PingRequest{message: "health"})
    # The ping runs in its own process (its owner) while this one keeps routing frames.
    health =
      Krait.Channel.start_health_check(
        channel(state),
        @ping_path,
        request,
        state.opts.health_timeout
      )

    {:noreply, %{state | health: health}}
  end

  def handle_info({:health, ref, result}, %{health: {ref, _pid, deadline}} = state) do
    Process.cancel_timer(deadline)
    health_result(%{state | health: nil}, result)
  end

  def handle_info({:health_deadline, ref}, %{health: {ref, pid, _}} = state) do
    Process.exit(pid, :kill)
    health_result(%{state | health: nil}, {:error, :no_answer})
  end

  ## Owners and links

  def handle_info({:DOWN, mon, :process, _pid, _reason}, %{calls: %Calls{} = calls} = state) do
    case Calls.owner_down(calls, mon) do
      :unknown -> {:noreply, state}
      calls -> {:noreply, %{state | calls: calls}}
    end
  end

  def handle_info({:EXIT, conn, reason}, %{conn: conn} = state) when conn != nil do
    Logger.warning("Krait worker #{state.id}: connection closed (#{inspect(reason)})")
    {:stop, {:shutdown, :connection_closed}, %{state | conn: nil}}
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state) when port != nil do
    {:stop, {:shutdown, :port_closed}, fail_calls(%{state | port: nil}, "worker port closed")}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    # Callers stop writing to the Port themselves (a caller that has not written its OPEN yet takes
    # its call back).
    state = close_link(state)
    state = read_stderr(%{state | output: Output.flush(state.output)})
    state = if state.output.hold, do: failed_start(state), else: state
    if state.stderr_file, do: File.rm(state.stderr_file)
    send(state.opts.pool, {:krait_worker_down, self(), reason, Output.lines(state.output)})

    # Over the link, calls were written to the Port by their callers, and this process may not have
    # seen their frames yet: what the worker sent, and sends until it exits, still reaches them (a
    # call it finished or started is not reported as never run), the rest fail after.
    state = stop_process(%{state | status: :stopping})
    fail_calls(state, "worker stopped")
    refuse_pending_opens()
    :ok
  end

  # Calls opened through this process (a caller on another node, or one that found no handle:
  # `Krait.Link.start_stream/4` sends a message, it does not wait) but still in the
  # mailbox as this process stops never reached the worker: each is answered as unprocessed, so its
  # caller retries it on another worker instead of seeing this process's exit (which would not tell
  # it whether its call had been sent). Last in `terminate/2`, to leave the least time for another.
  defp refuse_pending_opens do
    receive do
      {:krait_open, ref, owner, _method, _request, _timeout_ms, _metadata, _input_owner} ->
        refuse_open(owner, ref, "worker stopped")
        refuse_pending_opens()
    after
      0 -> :ok
    end
  end

  # Local callers find no handle any more, and one that has not written its OPEN finds the gate
  # closed (it takes its call back: never sent, retried elsewhere).
  defp close_link(%{calls: %Calls{} = calls} = state) do
    Registry.unregister()
    Krait.Link.Handle.close(Calls.handle(calls))
    state
  end

  defp close_link(state), do: state

  defp link_frame(state, frame, packet) do
    case frame do
      {:log, 0, payload} ->
        record = Krait.Proto.LogRecord.decode(payload)
        %{state | output: Output.record(state.output, record)}

      # input credit for the caller (a CREDIT frame from the worker)
      {:credit, id, _} when id > 0 ->
        {items, bytes} = Frame.input_credit(packet)
        %{state | calls: Calls.input_credit(state.calls, id, items, bytes)}

      {kind, id, payload} when id > 0 ->
        %{state | calls: Calls.frame(state.calls, kind, id, payload)}

      other ->
        Logger.warning("Krait worker #{state.id}: unexpected frame #{inspect(other, limit: 5)}")
        state
    end
  end

  defp refuse_open(owner, ref, message),
    do:
      send(owner, {:krait_stream, ref, {:done, {:error, Krait.GRPC.Error.unprocessed(message)}}})

  ## Startup

  defp link_ready(state, payload, metadata) do
    Process.cancel_timer(state.startup_timer)
    info = Krait.Proto.PingResponse.decode(payload)
    state = %{state | output: Output.release(state.output)}
    # from now on local callers write their frames to the Port themselves
    Registry.register(Calls.handle(state.calls))
    Process.send_after(self(), :reap_link_calls, @reap_interval)

    announce(%{state | status: :ready}, %{
      adapter: info.adapter,
      grpc_port: port_in(metadata, "grpc_port"),
      http_port: port_in(metadata, "http_port")
    })
  end

  defp grpc_ready(state, json) do
    Process.cancel_timer(state.startup_timer)

    with {:ok, %{"port" => tcp_port} = ready} <- Krait.JSON.decode(json),
         {:ok, conn} <- connect(tcp_port, state.opts) do
      state = %{state | output: Output.release(state.output)}

      announce(%{state | conn: conn, status: :ready}, %{
        grpc_port: tcp_port,
        http_port: Map.get(ready, "http_port")
      })
    else
      error ->
        Logger.debug("Krait worker #{state.id} could not connect: #{inspect(error)}")
        {:stop, {:shutdown, {:connect_failed, error}}, failed_start(state)}
    end
  end

  # a port the READY frame's metadata announces (as a string), or nil
  defp port_in(metadata, key) do
    case Integer.parse(Map.get(metadata, key, "")) do
      {port, ""} -> port
      _ -> nil
    end
  end

  defp announce(state, extra) do
    {module, pid} = channel(state)

    info =
      Map.merge(extra, %{
        worker_id: state.id,
        conn: pid,
        channel: module,
        os_pid: state.os_pid,
        transport: state.transport
      })

    send(state.opts.pool, {:krait_worker_ready, self(), info})
    schedule_health(state)
    {:noreply, state}
  end

  defp channel(%{transport: :link}), do: {Krait.Link, self()}
  defp channel(%{transport: :grpc, conn: conn}), do: {Krait.GRPC.Connection, conn}

  defp connect(tcp_port, %{connect_timeout: timeout} = opts) do
    metadata =
      case Map.get(opts, :token) do
        nil -> %{}
        token -> %{"authorization" => "Bearer " <> token.()}
      end

    Krait.GRPC.Connection.start_link(
      host: @host,
      port: tcp_port,
      connect_timeout: timeout,
      metadata: metadata
    )
  end

  # A link worker that exits before it could say anything has failed in the interpreter itself (no
  # python_worker importable, say), writing to stderr, which is not the link: ask the same Python, so
  # that the pool's last_error holds the cause.
  defp diagnose(%{transport: :link, output: %{tail_len: 0}, opts: opts} = state, _code) do
    task =
      Task.async(fn ->
        System.cmd(opts.python, ["-c", "import python_worker"],
          cd: opts.cwd,
          env: Enum.map(opts.env, fn {k, v} -> {to_string(k), v && to_string(v)} end),
          stderr_to_stdout: true
        )
      end)

    case Task.yield(task, 10_000) || Task.shutdown(task, :brutal_kill) do
      {:ok, {text, _status}} when text != "" ->
        %{state | output: Output.remember(state.output, String.trim_trailing(text))}

      _ ->
        state
    end
  end

  defp diagnose(state, _code), do: state

  # The start failed: what the worker said meanwhile goes to :debug (the pool's line names the cause).
  defp failed_start(state), do: %{state | output: Output.discard(state.output)}

  defp json_record(output, json) do
    case Krait.JSON.decode(json) do
      {:ok, %{"message" => message} = record} when is_binary(message) ->
        Output.record(output, record)

      _ ->
        Output.raw(output, @log_prefix <> json)
    end
  end

  defp fail_calls(%{calls: %Calls{} = calls} = state, message) do
    Registry.unregister()
    %{state | calls: Calls.fail_all(calls, message)}
  end

  defp fail_calls(state, _message), do: state

  ## Health

  defp health_result(state, {:ok, _}) do
    schedule_health(state)
    {:noreply, %{state | health_failures: 0}}
  end

  defp health_result(state, {:error, reason}) do
    failures = state.health_failures + 1

    if failures >= state.opts.health_failures do
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

  # With a recycling limit on memory, each health tick reads the process's resident size (not each
  # call: a /proc read costs ~20 µs) and tells the pool, which decides.
  defp report_rss(%{opts: %{watch_rss: true}, os_pid: os_pid} = state) when os_pid != nil do
    case File.read("/proc/#{os_pid}/status") do
      {:ok, text} ->
        mb = Krait.Pool.Recycle.rss_mb(text)
        if mb, do: send(state.opts.pool, {:krait_worker_rss, self(), mb})

      {:error, _} ->
        :ok
    end
  end

  defp report_rss(_state), do: :ok

  defp schedule_health(%{opts: %{health_interval: :infinity}}), do: :ok

  defp schedule_health(%{opts: %{health_interval: interval}}),
    do: Process.send_after(self(), :health_check, interval)

  ## Stopping the OS process

  # The process has exited (and been reaped): only its group can be left, e.g. a tool's child after
  # the worker was SIGKILLed. Only the group is signalled, as the pid itself may be reused by now.
  defp stop_process(%{port: nil, os_pid: nil} = state), do: state

  defp stop_process(%{port: nil, os_pid: os_pid} = state) do
    signal_group(os_pid, "KILL")
    state
  end

  defp stop_process(%{port: port, os_pid: os_pid, opts: opts} = state) do
    signal(os_pid, "TERM")

    {exited?, state} =
      await_exit(state, System.monotonic_time(:millisecond) + opts.shutdown_grace)

    unless exited?, do: catch_port_close(port)

    # Whatever is left of the group (a child that ignored SIGTERM) goes now.
    signal_group(os_pid, "KILL")

    # A signal is delivered asynchronously: a killed worker is waited for (briefly), so that a pool's
    # stop returns once its processes are gone.
    unless exited?, do: await_gone(os_pid, System.monotonic_time(:millisecond) + 1_000)
    %{state | port: nil}
  end

  # Waits for the process's exit until `deadline`, routing the link's frames meanwhile (a call's
  # result is not lost because the worker was stopping). Closing the Port after closes Python's stdin.
  defp await_exit(%{port: port} = state, deadline) do
    receive do
      {^port, {:exit_status, _}} ->
        {true, state}

      {^port, {:data, packet}} when is_binary(packet) and state.transport == :link ->
        state =
          try do
            link_frame(state, Frame.decode(packet), packet)
          rescue
            Krait.Proto.DecodeError -> state
          end

        await_exit(state, deadline)
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> {false, state}
    end
  end

  # Gone: no /proc entry, or a zombie (dead, waiting to be reaped by the BEAM's child helper).
  defp await_gone(os_pid, deadline) do
    alive? =
      case File.read("/proc/#{os_pid}/stat") do
        {:ok, stat} -> not (stat |> String.split(") ") |> List.last() |> String.starts_with?("Z"))
        {:error, _} -> false
      end

    if alive? and System.monotonic_time(:millisecond) < deadline do
      Process.sleep(5)
      await_gone(os_pid, deadline)
    end
  end

  defp kill(%{port: nil} = state), do: state

  defp kill(%{port: port, os_pid: os_pid} = state) do
    signal(os_pid, "KILL")
    catch_port_close(port)
    fail_calls(%{state | port: nil}, "worker killed")
  end

  defp catch_port_close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

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

  # A worker that listens gets the pool's token in its environment (argv is readable by every local
  # user in /proc); the config has already removed any other KRAIT_TOKEN from `env`.
  defp token_env(%{token: token}) when is_function(token, 0),
    do: [{~c"KRAIT_TOKEN", to_charlist(token.())}]

  defp token_env(_opts), do: []

  defp env_pair({k, v}) when is_nil(v) or v == false, do: {to_charlist(k), false}
  defp env_pair({k, v}), do: {to_charlist(k), to_charlist(v)}
end
