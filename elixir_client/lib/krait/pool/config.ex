defmodule Krait.Pool.Config do
  @moduledoc """
  A pool's configuration: the pool options' one declaration (`schema/0`, whose table is in
  `Krait.Pool`'s docs) and the struct `build/1` makes from them, with paths resolved.

  The token: every TCP port a worker serves needs one, since any local user can reach a loopback
  port. An endpoint pool sends `:token` (or `:token_file`'s, else `$KRAIT_TOKEN`, else the file
  `$KRAIT_TOKEN_FILE` names, as the Python clients do). A pool whose started workers listen
  (`transport: :grpc`, `expose_grpc: true`, `:http_port`) gives them `:token`, or a new 256-bit one,
  in their environment (`KRAIT_TOKEN`: argv is readable by every local user in `/proc`), connects
  with it, and shows it as `token` in `Krait.Pool.stats/1`. The pool's own `/metrics`
  (`:metrics_port`) wants the same token, so a pool serving it has one too. It is held as a closure, so crash reports
  and `:sys.get_state/1` show `#Function`, not the secret.
  """

  alias Krait.Options

  @schema [
    adapter: [
      type: :string,
      doc: "the Python adapter, `\"module:Class\"` (required unless `:endpoints` is given)"
    ],
    endpoints: [
      type: {:list, :string},
      doc:
        "remote workers instead of started ones: `\"host:port\"` (one worker) or " <>
          "`\"dns://name:port\"` (one per address of the name, re-resolved every `:dns_interval`); " <>
          "see `Krait.Worker.Remote`. `:adapter`, `:python`, `:size` do not apply"
    ],
    dns_interval: [
      type: :pos_integer,
      default: 30_000,
      doc: "with `dns://` endpoints: ms between resolutions (new addresses join, gone ones leave)"
    ],
    tls: [
      type: {:or, [:boolean, {:list, :any}]},
      default: false,
      doc:
        "with `:endpoints`: `true`, or `:ssl` client options (`cacertfile:`, `certfile:`, " <>
          "`keyfile:`...), to reach them over TLS; the server's certificate and host name are verified"
    ],
    token: [
      type: :string,
      default_doc:
        "`$KRAIT_TOKEN` / `:token_file` (endpoints); a new one (listening workers, `:metrics_port`)",
      doc:
        "the workers' token: sent as `authorization: Bearer <token>` to `:endpoints`; given to " <>
          "started workers that listen (`transport: :grpc`, `expose_grpc`, `http_port`) as " <>
          "`KRAIT_TOKEN`, a new random one when none is given (shown in `Krait.Pool.stats/1`); " <>
          "the pool's own `/metrics` wants it too"
    ],
    token_file: [
      type: :string,
      doc:
        "a file holding the token (surrounding whitespace dropped), instead of `:token`; " <>
          "default: the file `$KRAIT_TOKEN_FILE` names, when `$KRAIT_TOKEN` is not set"
    ],
    name: [
      type: :atom,
      default: Krait.Pool,
      doc: "the pool's registered name; calls name it with `pool:`"
    ],
    size: [
      type: :pos_integer,
      default_doc: "`System.schedulers_online()`",
      doc: "number of workers"
    ],
    python: [
      type: :string,
      default_doc:
        "`$KRAIT_PYTHON`, else the venv `mix krait.setup` made (`_build/krait/venv`), else `python3`",
      doc:
        "the Python executable: a path with a `/` is resolved against `:cwd`, a bare name through `PATH`"
    ],
    cwd: [
      type: :string,
      default_doc: "the current directory",
      doc: "the workers' working directory (where `python_worker` and the adapter import from)"
    ],
    env: [
      type: :env,
      default: [],
      doc:
        "extra environment variables for the workers (`nil` unsets one); workers get " <>
          "`MALLOC_ARENA_MAX=2` unless this (or the BEAM's environment) sets it"
    ],
    worker_args: [
      type: {:list, :string},
      default: [],
      doc: "extra arguments for `python -m python_worker serve`"
    ],
    startup_timeout: [
      type: :pos_integer,
      default: 30_000,
      doc: "ms a worker may take to report ready before it is killed and retried"
    ],
    recycle: [
      type: :keyword,
      default: [],
      doc:
        "replace a worker once it passes any of these limits: `calls:` calls given, `age:` ms up, " <>
          "`rss_mb:` MiB resident (read each `:health_interval`), e.g. `[calls: 10_000, rss_mb: 2_000]`; " <>
          "the replacement starts first, the old worker finishes its calls and ends its sessions; " <>
          "one replacement starts at a time (a worker due meanwhile serves on until it is ready), " <>
          "and each worker's `age:` is up to 10% shorter, at random, so workers started together " <>
          "retire apart (see `Krait.Pool.Recycle`)"
    ],
    cluster: [
      type: :boolean,
      default: false,
      doc:
        "act as one with the pools of the same name and `cluster: true` on connected nodes: a call " <>
          "that finds no idle worker here runs on an idle one of another node; a session is served " <>
          "where it is bound (see `Krait.Pool.Cluster`)"
    ],
    calls_per_worker: [
      type: :pos_integer,
      default: 1,
      doc:
        "calls a worker runs at once (leases it gives); a Python worker serves at most its " <>
          "`--max-calls` (32)"
    ],
    max_queue: [
      type: :non_neg_integer,
      default: 1_000,
      doc:
        "callers that may wait for a worker at once; beyond it calls fail with `:pool_saturated`"
    ],
    health_interval: [
      type: :timeout,
      default: 5_000,
      doc: "ms between health pings of a ready worker"
    ],
    health_timeout: [
      type: :pos_integer,
      default: 5_000,
      doc: "ms a health ping may take"
    ],
    health_failures: [
      type: :pos_integer,
      default: 2,
      doc: "failed pings in a row after which a worker is killed"
    ],
    backoff_min: [
      type: :pos_integer,
      default: 100,
      doc: "ms before a dead worker's replacement starts, after a first failure"
    ],
    backoff_max: [
      type: :pos_integer,
      default: 10_000,
      doc: "the most that delay grows to (it doubles with each failure in a row)"
    ],
    session_ttl: [
      type: :timeout,
      default: 3_600_000,
      doc: "ms after which an unused session binding is forgotten"
    ],
    lease_grace: [
      type: :non_neg_integer,
      default: 1_000,
      doc:
        "ms past a call's deadline after which the pool takes back a worker its caller still holds"
    ],
    shutdown_grace: [
      type: :non_neg_integer,
      default: 2_000,
      doc: "ms a worker's processes get to exit after SIGTERM before SIGKILL"
    ],
    connect_timeout: [
      type: :pos_integer,
      default: 5_000,
      doc: "ms for the connection to a started worker"
    ],
    transport: [
      type: {:in, [:link, :grpc]},
      default: :link,
      doc:
        "how the pool reaches its workers: `:link`, frames over their stdin/stdout (nothing listens), " <>
          "or `:grpc` on a loopback port"
    ],
    expose_grpc: [
      type: :boolean,
      default: false,
      doc:
        "with `transport: :link`, also serve each worker's gRPC service on a loopback port (shown as " <>
          "`grpc_port` in `Krait.Pool.stats/1`), for debugging or callers in other languages"
    ],
    http_port: [
      type: {:or, [{:in, [nil]}, :non_neg_integer]},
      default: nil,
      doc:
        "serve each started worker's HTTP front (JSON calls, Server-Sent Events, WebSocket and the " <>
          "live page; `docs/http.md`) on this loopback port: `0` gives each worker a free one, shown as " <>
          "`http_port` in `Krait.Pool.stats/1`; a fixed port needs `size: 1`; `nil`: none"
    ],
    trace: [
      type: :boolean,
      default: false,
      doc:
        "start a W3C trace for each call that has none (`:trace_context` or the caller's " <>
          "OpenTelemetry context), so every call's worker span has a trace id (see `Krait.Tracing`)"
    ],
    metrics_port: [
      type: {:or, [{:in, [nil]}, :non_neg_integer]},
      default: nil,
      doc:
        "serve the pool's Prometheus metrics and its workers' (`Krait.Metrics.prometheus/1`) at " <>
          "`/metrics` on this loopback port through `:inets` (0 picks a free one: " <>
          "`Krait.Metrics.HTTP.port/1`), wanting the pool's token (`token` in `Krait.Pool.stats/1`) " <>
          "as `authorization: Bearer <token>`; `nil`: no endpoint"
    ],
    handlers: [
      type: :any,
      default: %{},
      doc:
        "Elixir functions the tools of every call may call (`ctx.call(name, args)`): " <>
          "`%{\"name\" => fun}`, each `fun` taking the args and returning `{:ok, value}`, " <>
          "`{:error, reason}` or a value; a call's own `:handlers` win. Each runs in a process of " <>
          "its own, never in a worker's or the pool's"
    ],
    worker_module: [type: :atom, default: Krait.Worker, doc: false]
  ]

  @remote_only [:tls]
  @local_only [:http_port, :recycle]

  @enforce_keys [:name, :size, :adapter, :python, :cwd, :worker]
  defstruct [
    :endpoints,
    :name,
    :size,
    :adapter,
    :python,
    :cwd,
    :worker,
    :id_prefix,
    :worker_sup,
    :metrics_port,
    recycle: nil,
    token: nil,
    handlers: %{},
    trace: false,
    worker_module: Krait.Worker,
    dns_interval: 30_000,
    cluster: false,
    calls_per_worker: 1,
    max_queue: 1_000,
    backoff_min: 100,
    backoff_max: 10_000,
    session_ttl: 3_600_000,
    lease_grace: 1_000
  ]

  @typedoc "What a pool's worker needs to start (see `Krait.Worker`)."
  @type worker :: %{
          adapter: String.t(),
          python: String.t(),
          cwd: String.t(),
          env: [{String.t() | atom(), String.t() | atom() | nil | false}],
          worker_args: [String.t()],
          startup_timeout: pos_integer(),
          connect_timeout: pos_integer(),
          health_interval: timeout(),
          health_timeout: pos_integer(),
          health_failures: pos_integer(),
          shutdown_grace: non_neg_integer(),
          transport: :link | :grpc,
          expose_grpc: boolean(),
          http_port: non_neg_integer() | nil,
          token: (() -> String.t()) | nil,
          watch_rss: boolean()
        }

  @type t :: %__MODULE__{
          name: atom(),
          size: pos_integer(),
          adapter: String.t() | nil,
          python: String.t() | nil,
          cwd: String.t() | nil,
          endpoints: [String.t()] | nil,
          dns_interval: pos_integer(),
          worker: worker(),
          id_prefix: String.t(),
          worker_sup: atom(),
          worker_module: module(),
          calls_per_worker: pos_integer(),
          cluster: boolean(),
          metrics_port: non_neg_integer() | nil,
          recycle: Krait.Pool.Recycle.t() | nil,
          token: (() -> String.t()) | nil,
          handlers: Krait.Call.Handlers.t(),
          trace: boolean(),
          max_queue: non_neg_integer(),
          backoff_min: pos_integer(),
          backoff_max: pos_integer(),
          session_ttl: timeout(),
          lease_grace: non_neg_integer()
        }

  @doc "The pool options' declaration."
  @spec schema() :: Options.schema()
  def schema, do: @schema

  @doc """
  Validates pool options and builds the config. Errors are `%Krait.Error{category:
  :invalid_argument}` naming the option; paths in them are absolute.
  """
  @spec build(keyword()) :: {:ok, t()} | {:error, Krait.Error.t()}
  def build(opts) do
    with {:ok, o} <- validate(opts) do
      case o do
        %{endpoints: _, adapter: _} ->
          invalid(
            "Krait.Pool: give :adapter (workers the pool starts) or :endpoints (remote ones), not both"
          )

        %{endpoints: endpoints} ->
          with :ok <- only_local(o), do: remote(o, endpoints)

        %{adapter: _} ->
          local(o)

        _ ->
          invalid("Krait.Pool: option :adapter is required (or :endpoints, for remote workers)")
      end
    end
  end

  defp local(o) do
    given = Enum.filter(@remote_only, &(o[&1] not in [nil, false]))

    with :ok <-
           if(given == [],
             do: :ok,
             else: invalid("Krait.Pool: #{inspect(given)} apply to :endpoints only")
           ),
         size = Map.get_lazy(o, :size, &System.schedulers_online/0),
         :ok <- check_http_port(o.http_port, size),
         cwd = Path.expand(Map.get_lazy(o, :cwd, &File.cwd!/0)),
         :ok <- check_dir(cwd),
         {:ok, python} <- resolve_python(Map.get_lazy(o, :python, &default_python/0), cwd),
         {:ok, recycle} <- recycle(o.recycle),
         {:ok, token} <- local_token(o) do
      worker =
        o
        |> Map.take([
          :adapter,
          :worker_args,
          :startup_timeout,
          :connect_timeout,
          :health_interval,
          :health_timeout,
          :health_failures,
          :shutdown_grace,
          :transport,
          :expose_grpc,
          :http_port
        ])
        |> Map.merge(%{
          python: python,
          cwd: cwd,
          env: worker_env(o.env, token),
          token: secret(token),
          watch_rss: Krait.Pool.Recycle.watch_rss?(recycle)
        })

      {:ok,
       %__MODULE__{
         name: o.name,
         size: size,
         adapter: o.adapter,
         python: python,
         cwd: cwd,
         worker: worker,
         worker_module: o.worker_module,
         recycle: recycle,
         token: secret(token)
       }
       |> Map.merge(common(o))}
    end
  end

  defp remote(o, endpoints) do
    with :ok <- check_endpoints(endpoints),
         {:ok, tls} <- check_tls(o.tls),
         {:ok, token} <- given_token(o, true) do
      # the pool's own /metrics needs a token: the endpoints' one, else a new one (which the
      # endpoints, serving without a token then, ignore)
      token = if(token == nil and o.metrics_port != nil, do: generate_token(), else: token)

      worker =
        o
        |> Map.take([:connect_timeout, :health_interval, :health_timeout, :health_failures])
        # the token as a closure: crash reports and :sys.get_state show #Function, not the secret
        |> Map.merge(%{tls: tls, token: secret(token), transport: :remote})

      {:ok,
       %__MODULE__{
         name: o.name,
         size: length(endpoints),
         adapter: nil,
         python: nil,
         cwd: nil,
         endpoints: endpoints,
         dns_interval: o.dns_interval,
         worker: worker,
         worker_module:
           if(o.worker_module == Krait.Worker, do: Krait.Worker.Remote, else: o.worker_module)
       }
       |> Map.merge(common(o))}
    end
  end

  # What local and remote pools configure alike (metrics and tracing included).
  defp common(o) do
    %{
      id_prefix: o.name |> Atom.to_string() |> String.replace_prefix("Elixir.", ""),
      worker_sup: Module.concat(o.name, WorkerSupervisor),
      calls_per_worker: o.calls_per_worker,
      cluster: o.cluster,
      handlers: o.handlers,
      metrics_port: o.metrics_port,
      trace: o.trace,
      max_queue: o.max_queue,
      backoff_min: o.backoff_min,
      backoff_max: max(o.backoff_max, o.backoff_min),
      session_ttl: o.session_ttl,
      lease_grace: o.lease_grace
    }
  end

  defp only_local(o) do
    case Enum.filter(@local_only, &(o[&1] not in [nil, false, []])) do
      [] ->
        :ok

      given ->
        invalid("Krait.Pool: #{inspect(given)} apply to started workers only, not :endpoints")
    end
  end

  defp check_http_port(port, size) when is_integer(port) and port > 0 and size > 1,
    do:
      invalid(
        "Krait.Pool: http_port: #{port} would be the same port for #{size} workers: give 0 " <>
          "(each worker picks a free port, shown in Krait.Pool.stats/1) or size: 1",
        http_port: port
      )

  defp check_http_port(_port, _size), do: :ok

  defp secret(nil), do: nil
  defp secret(token), do: fn -> token end

  @doc """
  A new token: 256 random bits, URL-safe base64 without padding (43 characters), as the Python
  worker makes its own.
  """
  @spec generate_token() :: String.t()
  def generate_token, do: :crypto.strong_rand_bytes(32) |> Base.url_encode64(padding: false)

  # Started workers that serve a TCP port need a token: the one given, else a new one; the others
  # get none (the link is the pool's own pipe).
  defp local_token(o) do
    # the pool's own /metrics (Krait.Metrics.HTTP) wants the same token
    listens? =
      o.transport == :grpc or o.expose_grpc or o.http_port != nil or o.metrics_port != nil

    case given_token(o, false) do
      {:ok, nil} when listens? -> {:ok, generate_token()}
      other -> other
    end
  end

  # :token, else :token_file's; with `env?`, else $KRAIT_TOKEN, else the file $KRAIT_TOKEN_FILE names.
  defp given_token(o, env?) do
    cond do
      o[:token] && o[:token_file] ->
        invalid("Krait.Pool: give :token or :token_file, not both")

      o[:token] ->
        nonempty(String.trim(o.token), "option :token is empty")

      o[:token_file] ->
        read_token(o.token_file, ":token_file")

      env? and (System.get_env("KRAIT_TOKEN") || "") |> String.trim() != "" ->
        {:ok, String.trim(System.get_env("KRAIT_TOKEN"))}

      env? and (System.get_env("KRAIT_TOKEN_FILE") || "") |> String.trim() != "" ->
        read_token(String.trim(System.get_env("KRAIT_TOKEN_FILE")), "$KRAIT_TOKEN_FILE")

      true ->
        {:ok, nil}
    end
  end

  defp read_token(path, what) do
    path = Path.expand(path)

    case File.read(path) do
      {:ok, text} ->
        nonempty(String.trim(text), "the token file #{path} (#{what}) is empty")

      {:error, reason} ->
        invalid(
          "Krait.Pool: cannot read the token file #{path} (#{what}): #{:file.format_error(reason)}",
          token_file: path
        )
    end
  end

  defp nonempty("", message), do: invalid("Krait.Pool: " <> message)
  defp nonempty(token, _message), do: {:ok, token}

  # The workers' environment. With a token, `Krait.Worker` adds it as KRAIT_TOKEN when it spawns
  # (never in argv, which every local user can read in /proc; not here, where it would be plain
  # text in the pool's state): any the caller's :env or the BEAM's own environment holds goes.
  defp worker_env(env, token), do: env |> token_env(token) |> malloc_arenas()

  defp token_env(env, nil), do: Enum.to_list(env)

  defp token_env(env, _token) do
    rest = Enum.reject(env, fn {k, _} -> to_string(k) in ["KRAIT_TOKEN", "KRAIT_TOKEN_FILE"] end)
    rest ++ [{"KRAIT_TOKEN_FILE", false}]
  end

  # glibc gives each thread that allocates its own malloc arena (up to 8 per core) and seldom hands
  # their memory back: a worker's RSS grew from 71 to 193 MB under 600 cancelled busy streams, and
  # stayed at 115 MB, flat, with MALLOC_ARENA_MAX=2 (docs/performance.md). The pool's :env, or the
  # BEAM's own environment, decides otherwise.
  defp malloc_arenas(env) do
    given? =
      Enum.any?(env, fn {k, _} -> to_string(k) == "MALLOC_ARENA_MAX" end) or
        System.get_env("MALLOC_ARENA_MAX") != nil

    if given?, do: env, else: env ++ [{"MALLOC_ARENA_MAX", "2"}]
  end

  defp recycle(opts) do
    case Krait.Pool.Recycle.new(opts) do
      {:ok, policy} -> {:ok, policy}
      {:error, message} -> invalid("Krait.Pool: " <> message, recycle: opts)
    end
  end

  @doc """
  The Python a pool runs when `:python` is not given: `$KRAIT_PYTHON`, else the virtualenv
  `mix krait.setup` made (`venv_dir/0`) when it exists, else `python3` on `PATH`.
  """
  @spec default_python() :: String.t()
  def default_python do
    venv_python = Path.join(venv_dir(), "bin/python")

    cond do
      (p = System.get_env("KRAIT_PYTHON")) not in [nil, ""] -> p
      File.regular?(venv_python) -> venv_python
      true -> "python3"
    end
  end

  @doc """
  Where `mix krait.setup` makes the application's Python environment: `_build/krait/venv` beside
  the Mix project's per-environment build directories (one venv for `dev` and `test`; `_build` is
  ignored by git in every new Mix project). Outside Mix (a release), `_build/krait/venv` under the
  current directory: a release names its Python with `:python` or `$KRAIT_PYTHON` instead.
  """
  @spec venv_dir() :: String.t()
  def venv_dir do
    build =
      if Code.ensure_loaded?(Mix.Project) and Mix.Project.get() != nil,
        do: Path.dirname(Mix.Project.build_path()),
        else: Path.expand("_build")

    Path.join([build, "krait", "venv"])
  end

  defp check_endpoints([]), do: invalid("Krait.Pool: :endpoints is empty")

  defp check_endpoints(endpoints) do
    case Enum.find(endpoints, &(Krait.Pool.Endpoints.parse(&1) == :error)) do
      nil ->
        :ok

      bad ->
        invalid(
          "Krait.Pool: endpoint #{inspect(bad)} is not \"host:port\" or \"dns://name:port\" " <>
            "(a port from 1 to 65535)",
          endpoint: bad
        )
    end
  end

  defp check_tls(tls) when is_boolean(tls), do: {:ok, tls}

  defp check_tls(tls) do
    if Keyword.keyword?(tls),
      do: {:ok, tls},
      else: invalid("Krait.Pool: option :tls must be a boolean or a keyword list of :ssl options")
  end

  defp validate(opts) do
    with {:ok, o} <- Options.validate(opts, @schema),
         {:ok, handlers} <- Krait.Call.Handlers.validate(o.handlers, "option :handlers") do
      {:ok, %{o | handlers: handlers}}
    else
      {:error, message} -> invalid("Krait.Pool: " <> message)
    end
  end

  defp check_dir(cwd) do
    if File.dir?(cwd), do: :ok, else: invalid("Krait.Pool: :cwd #{cwd} is not a directory")
  end

  defp resolve_python(python, cwd) do
    path =
      if String.contains?(python, "/"),
        do: Path.expand(python, cwd),
        else: System.find_executable(python)

    cond do
      path == nil ->
        invalid("Krait.Pool: :python #{inspect(python)} was not found on PATH", python: python)

      not File.regular?(path) ->
        invalid("Krait.Pool: :python #{path} does not exist", python: path)

      true ->
        {:ok, path}
    end
  end

  defp invalid(message, details \\ []),
    do: {:error, Krait.Error.new(:invalid_argument, message, Map.new(details))}
end
