defmodule Krait.Pool.Scheduler.State do
  @moduledoc """
  The state of a pool's scheduler (`Krait.Pool.Scheduler`): the pure modules' data, and what the
  process itself keeps (callers awaiting readiness, the fast path's published values, counters).
  """

  alias Krait.Pool.{CellBook, Cells, Leases, Queue, Recycle, Sessions, Workers}

  @enforce_keys [:config, :name, :recycled]
  defstruct [
    :config,
    :name,
    :recycled,
    # the workers, the idle ones, the slots and their restart backoff
    table: nil,
    # who holds which worker
    leases: nil,
    # the fast path's cells (nil when calls_per_worker > 1 or the pool has no name), who owns each
    cells: nil,
    book: nil,
    # what the cells publish: the waiters, and (a cluster pool) nothing idle here, not failing
    waiting: 0,
    overflow: false,
    # whether this node advertises idle workers (a cluster pool, see Krait.Pool.Cluster)
    advertised: false,
    # the callers waiting, and the session bindings (a cluster pool's: those on other nodes too)
    queue: nil,
    sessions: nil,
    # callers of await_ready/2 until every slot has a ready worker
    awaiting: [],
    # nil, or the last start failure while every slot is failing to start
    failing: nil,
    # a remote pool's slot => its endpoint (see Krait.Pool.Endpoints), and the DNS errors
    endpoints: %{},
    dns_errors: [],
    # the last worker's start, spawn to ready (ms): how early a replacement starts
    startup_ms: 1_000
  ]

  @type t :: %__MODULE__{
          config: map(),
          name: term(),
          recycled: %{atom() => non_neg_integer()},
          table: Workers.t(),
          leases: Leases.t(),
          cells: Cells.t() | nil,
          book: CellBook.t() | nil,
          waiting: non_neg_integer(),
          overflow: boolean(),
          advertised: boolean(),
          queue: Queue.t(),
          sessions: Sessions.t(),
          awaiting: [GenServer.from()],
          failing: map() | nil,
          endpoints: %{term() => map()},
          dns_errors: list(),
          startup_ms: non_neg_integer()
        }

  @doc "The state of a new scheduler for `config`: no worker yet, nothing recycled."
  @spec new(map()) :: t()
  def new(config) do
    %__MODULE__{
      config: config,
      name: config.name,
      table: Workers.new(),
      leases: Leases.new(),
      queue: Queue.new(),
      sessions: Sessions.new(),
      recycled: Map.new(Recycle.reasons(), &{&1, 0})
    }
  end

  @doc "Whether every slot has a ready worker (what `Krait.Pool.await_ready/2` waits for)."
  @spec ready?(t()) :: boolean()
  def ready?(state), do: Workers.ready_count(state.table) >= map_size(state.table.slots)

  @doc "The pool's stats (see `Krait.Pool.stats/1`)."
  @spec stats(t()) :: map()
  def stats(state) do
    {workers, retiring} = Workers.stats(state.table, &endpoint(state, &1))
    count = fn status -> Enum.count(workers, &(&1.status == status)) end

    %{
      size: map_size(state.table.slots),
      ready: count.(:idle) + count.(:busy),
      idle: count.(:idle),
      busy: count.(:busy),
      starting: count.(:starting) + count.(:restarting),
      queue_length: Queue.size(state.queue),
      sessions: Sessions.size(state.sessions),
      failing: state.failing,
      # the token of a pool whose started workers listen (see Krait.Pool.Config): what other
      # callers of those ports need
      token: if(state.config.token, do: state.config.token.()),
      workers: workers,
      # replaced workers finishing their calls (see Krait.Pool.Recycle), and the count so far by reason
      retiring: retiring,
      recycled: state.recycled
    }
  end

  defp endpoint(state, slot) do
    case state.endpoints[slot] do
      nil -> nil
      e -> e.label
    end
  end
end
