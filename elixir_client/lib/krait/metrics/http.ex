defmodule Krait.Metrics.HTTP do
  @moduledoc """
  A pool's `/metrics` endpoint (pool option `metrics_port`): OTP's `:inets` HTTP server on loopback,
  answering `GET /metrics` with `Krait.Metrics.prometheus/1` and anything else with 404. One per
  pool, started under the pool's supervisor only when the option is set.

  Like every TCP port Krait serves, it wants the pool's token (`authorization: Bearer <token>`:
  the pool's `:token`, or the one it made, shown in `Krait.Pool.stats/1`): any local user can reach
  a loopback port, and the metrics name tools, sessions and call counts. Prometheus scrapes it with
  `authorization: {credentials_file: ...}`. The comparison is constant-time; a wrong or missing
  token is answered 401 only after a second (in the request's own process), so guessing costs
  time; connections are capped and a client sending fewer than 64 bytes a second is cut off.
  """

  use GenServer
  require Record
  require Logger

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @content_type ~c"text/plain; version=0.0.4; charset=utf-8"
  # how long a refusal for a wrong or missing token is held (as the Python worker's fronts do)
  @penalty_ms 1_000

  @doc false
  @spec children(Krait.Pool.Config.t()) :: [Supervisor.child_spec()]
  def children(%{metrics_port: nil}), do: []

  def children(config) do
    start = {__MODULE__, :start_link, [config.name, config.metrics_port, config.token]}
    [%{id: __MODULE__, start: start}]
  end

  @doc false
  @spec start_link(atom(), non_neg_integer(), (() -> String.t())) :: GenServer.on_start()
  def start_link(pool, port, token),
    do: GenServer.start_link(__MODULE__, {pool, port, token}, name: name(pool))

  @doc "The port a pool's `/metrics` endpoint listens on (`nil` when the pool has none)."
  @spec port(atom()) :: non_neg_integer() | nil
  def port(pool) do
    GenServer.call(name(pool), :port)
  catch
    :exit, _ -> nil
  end

  defp name(pool), do: Module.concat(pool, MetricsHTTP)

  @impl true
  def init({pool, port, token}) do
    Process.flag(:trap_exit, true)

    # read by each request's process (the :httpd callback has no state of its own); the digest, not
    # the token, so comparing is constant-time whatever the length given
    :persistent_term.put({__MODULE__, pool}, digest("Bearer " <> token.()))
    {:ok, _} = Application.ensure_all_started(:inets)
    root = System.tmp_dir!() |> String.to_charlist()

    config = [
      port: port,
      bind_address: {127, 0, 0, 1},
      server_name: String.to_charlist(Atom.to_string(pool)),
      server_root: root,
      document_root: root,
      modules: [__MODULE__],
      # a scrape is one small request: few connections, short heads, no slowloris
      max_clients: 16,
      max_header_size: 8192,
      max_body_size: 1024,
      keep_alive_timeout: 5,
      minimum_bytes_per_second: 64
    ]

    # under inets' own supervisor (a stand-alone httpd cannot tell the port it bound); stopped in terminate/2
    case :inets.start(:httpd, config) do
      {:ok, pid} ->
        bound = Keyword.fetch!(:httpd.info(pid, [:port]), :port)
        Logger.info("Krait pool #{inspect(pool)}: metrics at http://127.0.0.1:#{bound}/metrics")
        {:ok, %{pid: pid, port: bound, pool: pool}}

      {:error, reason} ->
        {:stop, {:metrics_port, port, reason}}
    end
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase({__MODULE__, state.pool})
    :inets.stop(:httpd, state.pid)
  end

  defp digest(text), do: :crypto.hash(:sha256, text)

  ## The :httpd module callback

  @doc false
  # httpd's callback for each request (OTP's httpd docs, "ERLANG WEB SERVER API").
  @spec unquote(:do)(tuple()) :: {:proceed, list()}
  def unquote(:do)(request) do
    pool = request |> mod(:config_db) |> :httpd_util.lookup(:server_name) |> pool_atom()

    if authorized?(pool, mod(request, :parsed_header)) do
      case {mod(request, :method), mod(request, :request_uri)} do
        {~c"GET", ~c"/metrics"} -> respond(200, Krait.Metrics.prometheus(pool))
        _ -> respond(404, "not found: this endpoint serves GET /metrics\n")
      end
    else
      Process.sleep(@penalty_ms)

      respond(
        401,
        "this endpoint needs 'Authorization: Bearer <token>' with the pool's token\n",
        [
          {:"www-authenticate", ~c"Bearer"}
        ]
      )
    end
  end

  defp authorized?(pool, headers) do
    given = :proplists.get_value(~c"authorization", headers, ~c"")
    expected = :persistent_term.get({__MODULE__, pool}, nil)
    expected != nil and :crypto.hash_equals(digest(List.to_string(given)), expected)
  end

  defp pool_atom(name), do: name |> List.to_string() |> String.to_existing_atom()

  defp respond(code, body, extra \\ []) do
    head =
      [code: code, content_type: @content_type, content_length: ~c"#{byte_size(body)}"] ++ extra

    {:proceed, [response: {:response, head, [body]}]}
  end
end
