defmodule Krait.Worker.Remote do
  @moduledoc """
  A pool's worker that runs elsewhere: a Python worker serving gRPC at one of the pool's
  `:endpoints` (`python -m python_worker serve --host ... --tls-cert ... --token-file ...`, see
  `docs/deploy.md`). The sibling of `Krait.Worker` for remote pools: no Port and no OS process,
  one `Krait.GRPC.Connection` (over TLS with `tls:`, carrying the pool's `token:` on every call),
  and the same reports to the pool (`{:krait_worker_ready, pid, info}`,
  `{:krait_worker_down, pid, reason, output}`), so the scheduler treats both alike.

  Life of a remote worker:

    1. connects to its endpoint (`connect_timeout`), then makes an authenticated `Ping`: a refused
       connection, a TLS failure (an untrusted certificate, a host-name mismatch, a plain-text
       worker) or a refused token stops it while starting, with the cause as its output line, so
       the pool restarts it with backoff, shows the error as the slot's `last_error` in
       `Krait.Pool.stats/1`, and fails calls fast while no endpoint is reachable;
    2. checks the worker every `health_interval` ms with `grpc.health.v1.Health/Check`; after
       `health_failures` failures in a row (no answer, or not `SERVING`) it leaves the pool;
    3. stops when its connection closes; the pool restarts it (reconnects) with backoff.
  """

  use GenServer, restart: :temporary
  require Logger

  alias Krait.GRPC.Connection

  @ping_path Krait.Proto.path(:ping)
  @health_path "/grpc.health.v1.Health/Check"
  # HealthCheckResponse.status SERVING (field 1, varint 1)
  @serving <<8, 1>>

  @doc """
  Starts a remote worker; `opts` is a remote pool's worker map plus `:worker_id`, `:pool` and
  `:endpoint` (a `t:Krait.Pool.Endpoints.t/0`).
  """
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    Logger.metadata(worker_id: opts.worker_id)
    endpoint = opts.endpoint

    state = %{
      opts: opts,
      id: opts.worker_id,
      endpoint: endpoint.label,
      name: endpoint.name,
      host: endpoint.host,
      port: endpoint.port,
      conn: nil,
      status: :starting,
      error: nil,
      health: nil,
      health_failures: 0
    }

    {:ok, state, {:continue, :connect}}
  end

  @impl true
  def handle_continue(:connect, state) do
    %{opts: opts} = state
    metadata = if opts.token, do: %{"authorization" => "Bearer " <> opts.token.()}, else: %{}

    conn_opts = [
      host: state.host,
      port: state.port,
      connect_timeout: opts.connect_timeout,
      tls: tls(opts.tls, state.name),
      metadata: metadata
    ]

    request = Krait.Proto.PingRequest.encode(%Krait.Proto.PingRequest{message: "ready"})

    with {:ok, conn} <- Connection.start_link(conn_opts),
         state = %{state | conn: conn},
         {:ok, reply} <-
           Connection.unary(conn, @ping_path, request, timeout: opts.connect_timeout) do
      ping = Krait.Proto.PingResponse.decode(reply)

      info = %{
        worker_id: state.id,
        conn: conn,
        channel: Connection,
        os_pid: nil,
        transport: :remote,
        endpoint: state.endpoint,
        adapter: ping.adapter,
        remote_worker_id: ping.worker_id
      }

      send(opts.pool, {:krait_worker_ready, self(), info})
      schedule_health(state)
      {:noreply, %{state | status: :ready}}
    else
      {:error, reason} -> failed(state, reason)
    end
  end

  # An address found through a DNS name is verified against the name (sent as SNI).
  defp tls(false, _name), do: false
  defp tls(tls, nil), do: tls
  defp tls(true, name), do: tls([], name)
  defp tls(tls, name), do: Keyword.put_new(tls, :server_name_indication, to_charlist(name))

  defp failed(state, reason) do
    {kind, text} = describe(reason)
    text = text <> hint(kind, state.opts.tls)
    # the pool's one line for a failed start says this (the error is its last_error)
    Logger.debug("Krait remote worker #{state.id}: #{state.endpoint}: #{text}")
    {:stop, {:shutdown, kind}, %{state | error: "#{state.endpoint}: #{text}"}}
  end

  # The usual mix-ups of TLS and plain text, said plainly.
  defp hint({:tls_alert, :unexpected_message}, _tls),
    do: " (the endpoint does not speak TLS: a plain-text worker?)"

  defp hint({:grpc_status, 14}, false), do: " (is it serving TLS? the pool has no :tls)"
  defp hint(_kind, _tls), do: ""

  @doc false
  # A short reason (the pool's `last_error.reason`) and a sentence for people.
  @spec describe(term()) :: {term(), String.t()}
  def describe(%Krait.GRPC.Error{status: 16, message: message}),
    do: {:unauthenticated, "the worker refused the token: #{message}"}

  def describe(%Krait.GRPC.Error{status: status, message: message}),
    do:
      {{:grpc_status, status},
       "the worker did not answer a ping (gRPC status #{status}): #{message}"}

  def describe({:tls_alert, {alert, text}}),
    do: {{:tls_alert, alert}, "TLS handshake failed: #{String.trim(to_string(text))}"}

  def describe({kind, text}) when kind in [:tls_alpn, :tls_hostname] and is_binary(text),
    do: {kind, "TLS: #{text}"}

  def describe(reason) when is_atom(reason),
    do: {reason, "cannot connect: #{:inet.format_error(reason)}"}

  def describe(reason), do: {reason, "cannot connect: #{inspect(reason)}"}

  @impl true
  def handle_cast(:lost, state), do: {:stop, {:shutdown, :connection_lost}, state}

  @impl true
  def handle_info(:health_check, %{status: :ready} = state) do
    channel = {Connection, state.conn}

    health =
      Krait.Channel.start_health_check(channel, @health_path, <<>>, state.opts.health_timeout)

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

  def handle_info({:EXIT, conn, reason}, %{conn: conn} = state) when conn != nil do
    Logger.warning(
      "Krait remote worker #{state.id}: connection to #{state.endpoint} closed (#{inspect(reason)})"
    )

    {:stop, {:shutdown, :connection_closed},
     %{state | conn: nil, error: "#{state.endpoint}: connection closed"}}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    output = if state.error, do: [state.error], else: []
    send(state.opts.pool, {:krait_worker_down, self(), reason, output})

    if state.conn != nil and Process.alive?(state.conn) do
      Process.unlink(state.conn)
      Process.exit(state.conn, :shutdown)
    end

    :ok
  end

  defp health_result(state, {:ok, @serving}) do
    schedule_health(state)
    {:noreply, %{state | health_failures: 0}}
  end

  defp health_result(state, result) do
    reason = with {:ok, other} <- result, do: {:not_serving, other}
    failures = state.health_failures + 1

    if failures >= state.opts.health_failures do
      Logger.error(
        "Krait remote worker #{state.id} (#{state.endpoint}) unhealthy: #{failures} health checks " <>
          "failed, last: #{inspect(reason)}; leaving the pool"
      )

      {:stop, {:shutdown, :unhealthy}, %{state | error: "#{state.endpoint}: unhealthy"}}
    else
      Logger.warning("Krait remote worker #{state.id} health check failed: #{inspect(reason)}")
      schedule_health(state)
      {:noreply, %{state | health_failures: failures}}
    end
  end

  defp schedule_health(%{opts: %{health_interval: :infinity}}), do: :ok

  defp schedule_health(%{opts: %{health_interval: interval}}),
    do: Process.send_after(self(), :health_check, interval)
end
