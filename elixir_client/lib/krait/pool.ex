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

  A pool of workers that run elsewhere names their endpoints instead (see `Krait.Worker.Remote` and
  `docs/deploy.md`):

      {Krait.Pool, name: Remote, endpoints: ["dns://krait-workers.krait.svc:50051"],
       tls: [cacertfile: "ca.crt"], token: token}

  Calls name the pool with `pool: MyPool`; without `:name` the pool is `Krait.Pool`, the one
  `Krait.execute/3` and friends use when `:pool` is omitted.

  ## Options

  Declared once in `Krait.Pool.Config`; unknown options and wrong types are refused by
  `start_link/1` with a `%Krait.Error{category: :invalid_argument}` naming the option.

  #{Krait.Options.docs(Krait.Pool.Config.schema())}

  Workers start concurrently and calls made before they are ready wait in the queue; use
  `await_ready/2` to wait for all of them.

  Without a supervision tree of your own, `config :krait, pool: [adapter: ..., ...]` starts one pool
  with the `:krait` application.
  """

  use Supervisor

  @type option :: {atom(), term()}

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
  @spec start_link([option()]) :: Supervisor.on_start() | {:error, Krait.Error.t()}
  def start_link(opts) do
    case Krait.Pool.Config.build(opts) do
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
  restarted; per worker, `calls` counts completed calls, `in_flight` the calls it runs now (up to
  `:calls_per_worker`; `:busy` when full) and `restarts` how often its slot was restarted;
  `grpc_port` and `http_port` are the loopback ports a worker serves gRPC and HTTP on (`nil` when it
  does not: see the options `:expose_grpc`, `:transport` and `:http_port`). A remote pool's workers
  have their `endpoint` and no `os_pid`; its `size` is the number of endpoints found.
  """
  @spec stats(GenServer.server()) :: map()
  def stats(pool \\ __MODULE__), do: Krait.Pool.Scheduler.stats(pool)

  @doc """
  Waits until every worker of the pool is ready: `:ok`, `{:error, :timeout}`, or, as soon as every
  worker's start has failed, `{:error, %Krait.Error{category: :pool, details: %{reason:
  :workers_failing, last_error: output}}}` (see `Krait.Error`).
  """
  @spec await_ready(GenServer.server(), timeout()) :: :ok | {:error, :timeout | Krait.Error.t()}
  def await_ready(pool \\ __MODULE__, timeout \\ 60_000) do
    case Krait.Pool.Scheduler.await_ready(pool, timeout) do
      {:error, {:workers_failing, _} = reason} ->
        {:error, Krait.Error.pool(reason, %{pool: pool})}

      other ->
        other
    end
  end

  @doc "Stops a pool started with `start_link/1` and its workers."
  @spec stop(atom(), timeout()) :: :ok
  def stop(name \\ __MODULE__, timeout \\ 30_000),
    do: Supervisor.stop(supervisor_name(name), :normal, timeout)

  @impl true
  def init(config) do
    Krait.Metrics.setup(config)
    # read by each call of the pool, in the caller (Krait.Call.Handlers): no message to the pool
    Krait.Call.Handlers.put_pool(config.name, config.handlers)

    children =
      [
        {DynamicSupervisor, strategy: :one_for_one, name: config.worker_sup},
        {Krait.Pool.Scheduler, config}
      ] ++ Krait.Metrics.HTTP.children(config)

    # The scheduler's state describes the workers: if either goes, both restart.
    Supervisor.init(children, strategy: :one_for_all, max_restarts: 3, max_seconds: 5)
  end

  defp supervisor_name(name), do: Module.concat(name, Supervisor)
end
