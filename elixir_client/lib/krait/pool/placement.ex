defmodule Krait.Pool.Placement do
  @moduledoc """
  Where a call goes, as pure decisions over the session table (`Krait.Pool.Sessions`) and the
  worker table (`Krait.Pool.Workers`):

    * `checkout/7`, `place/5`: a new checkout (its session, if any, and affinity) gets an idle worker, waits in
      the general queue or for its session's worker, or fails at once;
    * `dispatch/4`: the oldest waiter of the general queue meets a free worker; its session may
      have been bound while it waited, so it may take another worker or wait for its own.

  A session is bound to a worker when its first call is given one. Calls already waiting when the
  binding is made (concurrent first calls) follow it to that worker, so they never land on
  different workers; calls made after it follow their affinity (`:hint` takes any free worker
  while the session's worker is busy, `:strict_queue` waits for it, `:strict_fail_fast` fails).
  Both functions return the session table too: a binding to a worker that is gone (`:hint`) or
  retiring is dropped on the way (the session starts afresh).
  """

  alias Krait.Pool.{Sessions, Workers}

  @type affinity :: :hint | :strict_queue | :strict_fail_fast
  @type placed ::
          {:assign, Workers.id()}
          | {:enqueue, :any | Workers.id()}
          | {:error,
             :all_busy | :worker_busy | :session_worker_unavailable | {:workers_failing, map()}}

  @typedoc """
  How a checkout reached the pool (see `Krait.Pool.Cluster`): `:try` and `:first` are a caller of
  this node (`:try` sends a session not bound here to the other nodes first), `:if_bound` and
  `:idle_only` another node's caller, `:queue` places or waits.
  """
  @type mode :: :try | :first | :if_bound | :idle_only | :queue

  @typedoc "A cluster pool's name and the nodes connected now; nil for a pool on its own."
  @type cluster :: %{name: term(), nodes: [node()]} | nil

  @doc """
  A checkout in `mode`: `place/5`, and what a cluster pool answers instead of queueing or failing
  a call another node may serve: `{:ask_cluster, name}` (a session not bound here, unless the node
  it was bound on is gone), `{:no_idle_here, name}` (nothing idle here for this node's caller),
  `:no_idle` (nothing idle for another node's caller), `:not_bound` (not bound here for another
  node's caller).
  """
  @spec checkout(
          String.t() | nil,
          affinity(),
          mode(),
          Sessions.t(),
          Workers.t(),
          map() | nil,
          cluster()
        ) ::
          {placed(), Sessions.t()}
  def checkout(session, affinity, :try, sessions, _table, _failing, %{} = cluster)
      when session != nil and not is_map_key(sessions.bound, session) do
    case Sessions.remote_node(sessions, session) do
      # bound on a node that is gone: the session's worker died with it
      node when node != nil and affinity != :hint ->
        if node in cluster.nodes,
          do: {{:error, {:ask_cluster, cluster.name}}, sessions},
          else: {{:error, :session_worker_unavailable}, sessions}

      _ ->
        {{:error, {:ask_cluster, cluster.name}}, sessions}
    end
  end

  def checkout(session, _affinity, :if_bound, sessions, _table, _failing, _cluster)
      when not is_map_key(sessions.bound, session),
      do: {{:error, :not_bound}, sessions}

  def checkout(session, affinity, mode, sessions, table, failing, cluster) do
    {placed, sessions} = place(session, affinity, sessions, table, failing)
    here? = mode in [:try, :first] and cluster != nil

    case placed do
      # another node's caller asking for an idle worker: no queueing here
      {:enqueue, _queue} when mode == :idle_only -> {{:error, :no_idle}, sessions}
      {:enqueue, :any} when here? -> {{:error, {:no_idle_here, cluster.name}}, sessions}
      # a :strict_fail_fast first call finds every worker here busy: the caller asks the other
      # nodes for an idle one, as for a call that would queue; busy everywhere, it fails fast
      {:error, :all_busy} when mode == :idle_only -> {{:error, :no_idle}, sessions}
      {:error, :all_busy} when here? -> {{:error, {:no_idle_here, cluster.name}}, sessions}
      {:error, :all_busy} -> {{:error, :worker_busy}, sessions}
      placed -> {placed, sessions}
    end
  end

  @doc """
  Whether a checkout without a session, made now by this node's caller in `:try` mode, would be
  answered `{:no_idle_here, _}`: a cluster pool (`cluster?`) with no worker idle that is not
  failing. The scheduler publishes it (`Krait.Pool.Cells.set_overflow/2`) so that such a caller
  asks the other nodes at once, without that round trip.
  """
  @spec overflow?(boolean(), Workers.t(), map() | nil) :: boolean()
  def overflow?(cluster?, table, failing), do: cluster? and table.idle == [] and failing == nil

  @doc """
  Places a new checkout of `session` (nil: none) with `affinity`. `failing` is the pool's start
  failure (nil: not failing). `{:error, :all_busy}` is a `:strict_fail_fast` first call while
  every worker is busy (in a cluster another node's may be idle).
  """
  @spec place(String.t() | nil, affinity(), Sessions.t(), Workers.t(), map() | nil) ::
          {placed(), Sessions.t()}
  def place(nil, _affinity, sessions, table, failing),
    do: {idle_or_queue(table, failing), sessions}

  def place(sid, affinity, sessions, table, failing) do
    case Sessions.worker(sessions, sid) do
      nil ->
        {first_call(affinity, table, failing), sessions}

      wid ->
        case Workers.get(table, wid) do
          nil when affinity == :hint ->
            {first_call(affinity, table, failing), Sessions.forget(sessions, sid)}

          nil ->
            {{:error, :session_worker_unavailable}, sessions}

          # recycled: the session ended with it (its binding is normally dropped already)
          %{status: :retiring} ->
            {first_call(affinity, table, failing), Sessions.forget(sessions, sid)}

          %{status: :idle} ->
            {{:assign, wid}, sessions}

          %{status: :busy} ->
            cond do
              affinity == :strict_fail_fast -> {{:error, :worker_busy}, sessions}
              affinity == :strict_queue -> {{:enqueue, wid}, sessions}
              table.idle != [] -> {{:assign, Workers.pick_idle(table)}, sessions}
              true -> {{:enqueue, :any}, sessions}
            end
        end
    end
  end

  # A session's first call (or one starting afresh).
  defp first_call(:strict_fail_fast, table, nil) do
    case Workers.pick_idle(table) do
      nil -> {:error, :all_busy}
      wid -> {:assign, wid}
    end
  end

  defp first_call(_affinity, table, failing), do: idle_or_queue(table, failing)

  defp idle_or_queue(table, failing) do
    case Workers.pick_idle(table) do
      nil when failing == nil -> {:enqueue, :any}
      nil -> {:error, {:workers_failing, failing}}
      wid -> {:assign, wid}
    end
  end

  @typedoc """
  What a general waiter does when worker `wid` is free: take it (`:hand_over`), take its
  session's idle worker `other` instead (`{:take, other}`; `wid` serves the next), wait for its
  session's worker (`{:wait_for, other}`), or fail (`:reject`: its session's worker is gone).
  """
  @type dispatched :: :hand_over | {:take, Workers.id()} | {:wait_for, Workers.id()} | :reject

  @doc """
  The general queue's oldest waiter (`session`, `affinity`, `first?`: it was its session's first
  call when it queued) meets free worker `wid`.
  """
  @spec dispatch(
          %{session: String.t() | nil, affinity: affinity(), first: boolean()},
          Workers.id(),
          Sessions.t(),
          Workers.t()
        ) :: {dispatched(), Sessions.t()}
  def dispatch(%{session: nil}, _wid, sessions, _table), do: {:hand_over, sessions}

  def dispatch(w, wid, sessions, table) do
    case Sessions.worker(sessions, w.session) do
      nil ->
        {:hand_over, sessions}

      ^wid ->
        {:hand_over, sessions}

      other ->
        case Workers.get(table, other) do
          nil when w.affinity == :hint -> {:hand_over, Sessions.forget(sessions, w.session)}
          %{status: :retiring} -> {:hand_over, Sessions.forget(sessions, w.session)}
          nil -> {:reject, sessions}
          %{status: :busy} when w.affinity == :hint and not w.first -> {:hand_over, sessions}
          %{status: :idle} -> {{:take, other}, sessions}
          # waits for its own worker now, keeping its place (arrival number)
          _ -> {{:wait_for, other}, sessions}
        end
    end
  end
end
