defmodule Krait.Metrics.HTTP do
  @moduledoc """
  A pool's `/metrics` endpoint (pool option `metrics_port`): OTP's `:inets` HTTP server on loopback,
  answering `GET /metrics` with `Krait.Metrics.prometheus/1` and anything else with 404. One per
  pool, started under the pool's supervisor only when the option is set.
  """

  use GenServer
  require Record
  require Logger

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @content_type ~c"text/plain; version=0.0.4; charset=utf-8"

  @doc false
  @spec children(Krait.Pool.Config.t()) :: [Supervisor.child_spec()]
  def children(%{metrics_port: nil}), do: []

  def children(config) do
    [%{id: __MODULE__, start: {__MODULE__, :start_link, [config.name, config.metrics_port]}}]
  end

  @doc false
  @spec start_link(atom(), non_neg_integer()) :: GenServer.on_start()
  def start_link(pool, port), do: GenServer.start_link(__MODULE__, {pool, port}, name: name(pool))

  @doc "The port a pool's `/metrics` endpoint listens on (`nil` when the pool has none)."
  @spec port(atom()) :: non_neg_integer() | nil
  def port(pool) do
    GenServer.call(name(pool), :port)
  catch
    :exit, _ -> nil
  end

  defp name(pool), do: Module.concat(pool, MetricsHTTP)

  @impl true
  def init({pool, port}) do
    Process.flag(:trap_exit, true)
    {:ok, _} = Application.ensure_all_started(:inets)
    root = System.tmp_dir!() |> String.to_charlist()

    config = [
      port: port,
      bind_address: {127, 0, 0, 1},
      server_name: String.to_charlist(Atom.to_string(pool)),
      server_root: root,
      document_root: root,
      modules: [__MODULE__]
    ]

    # under inets' own supervisor (a stand-alone httpd cannot tell the port it bound); stopped in terminate/2
    case :inets.start(:httpd, config) do
      {:ok, pid} ->
        bound = Keyword.fetch!(:httpd.info(pid, [:port]), :port)
        Logger.info("Krait pool #{inspect(pool)}: metrics at http://127.0.0.1:#{bound}/metrics")
        {:ok, %{pid: pid, port: bound}}

      {:error, reason} ->
        {:stop, {:metrics_port, port, reason}}
    end
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  @impl true
  def terminate(_reason, state), do: :inets.stop(:httpd, state.pid)

  ## The :httpd module callback

  @doc false
  # httpd's callback for each request (OTP's httpd docs, "ERLANG WEB SERVER API").
  @spec unquote(:do)(tuple()) :: {:proceed, list()}
  def unquote(:do)(request) do
    pool = :httpd_util.lookup(mod(request, :config_db), :server_name)

    case {mod(request, :method), mod(request, :request_uri)} do
      {~c"GET", ~c"/metrics"} -> respond(200, Krait.Metrics.prometheus(pool_atom(pool)))
      _ -> respond(404, "not found: this endpoint serves GET /metrics\n")
    end
  end

  defp pool_atom(name), do: name |> List.to_string() |> String.to_existing_atom()

  defp respond(code, body) do
    head = [code: code, content_type: @content_type, content_length: ~c"#{byte_size(body)}"]
    {:proceed, [response: {:response, head, [body]}]}
  end
end
