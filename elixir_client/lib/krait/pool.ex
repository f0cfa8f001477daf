defmodule Krait.Pool do
  @moduledoc """
  A pool of Python workers, started in your supervision tree:

      children = [
        {Krait.Pool,
         name: MyPool,
         adapter: "adapters.ml:MLAdapter",
         size: 4,
         python: ".venv/bin/python",
         cwd: "/srv/my_tools"}
      ]

  Calls name the pool with `pool: MyPool`; without `:name` the pool is `Krait.Pool`, the one
  `Krait.execute/3` and friends use when `:pool` is omitted.

  ## Options

    * `:adapter` (required) - the Python adapter, `"module:Class"`.
    * `:name` - the pool's registered name (an atom), default `Krait.Pool`.
    * `:size` - number of workers, default `System.schedulers_online()`.
    * `:python` - the Python executable, default `"python3"`; a relative path is resolved against
      `:cwd`, a bare name through `PATH`.
    * `:cwd` - the workers' working directory (where `python_worker` and the adapter can be imported),
      default the current directory.
    * `:env` - extra environment variables for the workers, a map or list of `{name, value}`
      (`nil` unsets one).
    * `:worker_args` - extra command-line arguments for `python -m python_worker serve`.
    * `:startup_timeout` - ms a worker may take to report ready before it is killed and retried,
      default 30_000.
    * `:max_queue` - callers that may wait for a worker at once; beyond it calls fail with
      `:pool_saturated`. Default 1_000.
    * `:health_interval` - ms between health pings of a ready worker (or `:infinity`), default 5_000.
    * `:health_timeout` - ms a ping may take, default 5_000.
    * `:health_failures` - failed pings in a row after which a worker is killed, default 2.
    * `:backoff_min`, `:backoff_max` - ms before a dead worker's replacement starts: `backoff_min`
      after a first failure, doubling on each consecutive one, at most `backoff_max`. Defaults 100
      and 10_000.
    * `:session_ttl` - ms after which an unused session binding is forgotten, default 3_600_000.
    * `:lease_grace` - ms past a call's deadline after which the pool takes a worker back from a caller
      that still holds it, default 1_000.
    * `:shutdown_grace` - ms a worker's process gets to exit after SIGTERM before SIGKILL, default 2_000.
    * `:connect_timeout` - ms for the gRPC connection to a worker, default 5_000.

  Workers start concurrently and calls made before they are ready wait in the queue; use
  `await_ready/2` to wait for all of them.

  Without a supervision tree of your own, `config :krait, pool: [adapter: ..., ...]` starts one pool
  with the `:krait` application.
  """

  use Supervisor

  @type option :: {atom(), term()}

  @defaults [
    name: __MODULE__,
    python: "python3",
    startup_timeout: 30_000,
    max_queue: 1_000,
    health_interval: 5_000,
    health_timeout: 5_000,
    health_failures: 2,
    backoff_min: 100,
    backoff_max: 10_000,
    session_ttl: 3_600_000,
    lease_grace: 1_000,
    shutdown_grace: 2_000,
    connect_timeout: 5_000,
    host: "127.0.0.1",
    env: [],
    worker_args: [],
    worker_module: Krait.Worker
  ]

  @doc "The child spec: `{Krait.Pool, opts}` in a supervisor's children."
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    name = Keyword.get(opts, :name, __MODULE__)

    %{
      id: {__MODULE__, name},
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor
    }
  end

  @doc "Starts a pool (see the module doc for the options)."
  @spec start_link([option()]) :: Supervisor.on_start()
  def start_link(opts) do
    case build_config(opts) do
      {:ok, config} ->
        Supervisor.start_link(__MODULE__, config, name: supervisor_name(config.name))

      {:error, _} = error ->
        error
    end
  end

  @doc """
  The pool's state:

      %{size: 4, ready: 4, idle: 3, busy: 1, starting: 0, queue_length: 0, sessions: 1,
        workers: [%{slot: 1, id: "MyPool-1.0", status: :busy, os_pid: 4242, calls: 17,
                    restarts: 0, pid: #PID<...>}, ...]}

  `ready` counts workers that are up (idle or busy); `starting` those starting or waiting to be
  restarted; per worker, `calls` counts completed calls and `restarts` how often its slot was
  restarted.
  """
  @spec stats(GenServer.server()) :: map()
  def stats(pool \\ __MODULE__), do: Krait.Pool.Scheduler.stats(pool)

  @doc "Waits until every worker of the pool is ready: `:ok` or `{:error, :timeout}`."
  @spec await_ready(GenServer.server(), timeout()) :: :ok | {:error, :timeout}
  def await_ready(pool \\ __MODULE__, timeout \\ 60_000),
    do: Krait.Pool.Scheduler.await_ready(pool, timeout)

  @doc "Stops a pool started with `start_link/1` and its workers."
  @spec stop(atom(), timeout()) :: :ok
  def stop(name \\ __MODULE__, timeout \\ 30_000),
    do: Supervisor.stop(supervisor_name(name), :normal, timeout)

  @impl true
  def init(config) do
    children = [
      {DynamicSupervisor, strategy: :one_for_one, name: config.worker_sup},
      {Krait.Pool.Scheduler, config}
    ]

    # The scheduler's state describes the workers: if either goes, both restart.
    Supervisor.init(children, strategy: :one_for_all, max_restarts: 3, max_seconds: 5)
  end

  defp supervisor_name(name), do: Module.concat(name, Supervisor)

  @doc false
  @spec build_config([option()]) :: {:ok, map()} | {:error, term()}
  def build_config(opts) do
    opts = Keyword.merge(@defaults, opts)
    name = opts[:name]
    cwd = Path.expand(opts[:cwd] || File.cwd!())

    with :ok <- check(is_atom(name), "pool :name must be an atom"),
         :ok <- check(is_binary(opts[:adapter]), "pool :adapter (\"module:Class\") is required"),
         size = opts[:size] || System.schedulers_online(),
         :ok <- check(is_integer(size) and size > 0, "pool :size must be a positive integer"),
         :ok <- check(File.dir?(cwd), "pool :cwd #{cwd} is not a directory"),
         {:ok, python} <- resolve_python(opts[:python], cwd) do
      worker = %{
        adapter: opts[:adapter],
        python: python,
        cwd: cwd,
        env: Enum.to_list(opts[:env]),
        worker_args: opts[:worker_args],
        host: opts[:host],
        startup_timeout: opts[:startup_timeout],
        connect_timeout: opts[:connect_timeout],
        health_interval: opts[:health_interval],
        health_timeout: opts[:health_timeout],
        health_failures: opts[:health_failures],
        shutdown_grace: opts[:shutdown_grace]
      }

      {:ok,
       %{
         name: name,
         size: size,
         id_prefix: name |> Atom.to_string() |> String.replace_prefix("Elixir.", ""),
         worker_sup: Module.concat(name, WorkerSupervisor),
         worker_module: opts[:worker_module],
         worker: worker,
         max_queue: opts[:max_queue],
         backoff_min: opts[:backoff_min],
         backoff_max: opts[:backoff_max],
         session_ttl: opts[:session_ttl],
         lease_grace: opts[:lease_grace]
       }}
    end
  end

  defp check(true, _message), do: :ok
  defp check(false, message), do: {:error, {:invalid_option, message}}

  defp resolve_python(python, cwd) when is_binary(python) do
    path =
      if String.contains?(python, "/"),
        do: Path.expand(python, cwd),
        else: System.find_executable(python)

    if path && File.regular?(path),
      do: {:ok, path},
      else: {:error, {:python_not_found, python}}
  end

  defp resolve_python(python, _cwd), do: {:error, {:python_not_found, python}}
end
