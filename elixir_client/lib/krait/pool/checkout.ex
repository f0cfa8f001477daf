defmodule Krait.Pool.Checkout do
  @moduledoc """
  The caller's side of a checkout (it runs in the caller's process, never in the scheduler's): a
  call without a session claims an idle worker itself (`Krait.Pool.Cells`), without a round trip;
  other calls ask the scheduler (`Krait.Pool.Scheduler`), and in a cluster pool the other nodes'
  pools when the scheduler says so (`Krait.Pool.Cluster`), or at once, for a call without a
  session, when the cells say that the scheduler would (`Krait.Pool.Cells.overflow?/1`); a unary
  call may be run whole on the other node instead (`t:how/0`). `checkin/2` gives the worker back.
  """

  alias Krait.Pool.{Cells, Cluster, Lease, Scheduler}

  # A checkout's GenServer.call outlives the caller's deadline by this margin, so the pool's own reply
  # (:queue_timeout) normally wins.
  @call_margin 5_000

  @typedoc """
  How a checkout may be answered besides a lease of this node's worker:

    * `:lease` (the default): a lease, of another node's worker too (a cluster pool);
    * `{:run_elsewhere, run}`: when the call would go to another node, `run.(node, name)` (the
      pool's name there) is offered it first, node by node (those advertising idle workers
      first); `run` runs the whole call there and answers `{:ran, result}` (the checkout's answer
      then), or `:declined` when that node had no idle worker after all. A call no node took waits
      in this node's queue as usual;
    * `:idle_only`: this node's idle worker or `{:error, :no_idle}`, never the queue nor another
      node (what a call run here for another node's caller asks).
  """
  @type how ::
          :lease | {:run_elsewhere, (node(), atom() -> {:ran, term()} | :declined)} | :idle_only

  @doc """
  Checks a worker out for a call. `deadline` is an absolute `System.monotonic_time(:millisecond)` or
  `:infinity`; waiting in the queue stops there with `{:error, :queue_timeout}`. `how`: see `t:how/0`.
  """
  @spec checkout(
          GenServer.server(),
          String.t() | nil,
          Scheduler.affinity(),
          Scheduler.deadline(),
          how()
        ) ::
          {:ok, Lease.t()} | {:ran, term()} | {:error, Scheduler.checkout_error() | :no_idle}
  def checkout(pool, session_id, affinity, deadline, how \\ :lease) do
    # A call without a session takes an idle worker itself when one is offered (Krait.Pool.Cells):
    # no round trip; the scheduler hears of it by a cast.
    case session_id == nil and claim_idle(pool, deadline) do
      {:ok, lease} -> {:ok, lease}
      # nothing idle here, the scheduler says so too: never the queue for another node's caller
      :overflow when how == :idle_only -> {:error, :no_idle}
      :overflow -> checkout_call(pool, nil, affinity, deadline, {:elsewhere, how})
      _ when how == :idle_only -> checkout_call(pool, nil, affinity, deadline, :idle_only)
      _ -> checkout_call(pool, session_id, affinity, deadline, {:try, how})
    end
  end

  defp claim_idle(pool, deadline) do
    with %Cells{} = cells <- Cells.lookup(pool) do
      ref = make_ref()

      case Cells.claim(cells, ref, deadline) do
        {:ok, {index, gen, counter}, {wid, pid, conn, channel}} ->
          GenServer.cast(cells.pid, {:claimed, index, gen, counter})

          {:ok,
           %Lease{
             ref: ref,
             pool: cells.pid,
             worker_id: wid,
             worker_pid: pid,
             conn: conn,
             channel: channel,
             cells: cells,
             cell: {index, gen, counter}
           }}

        {:withdrawn, _claim} ->
          GenServer.cast(cells.pid, {:checkin, ref, :ok})
          :none

        # no idle cell: when the scheduler says nothing is idle here either (a cluster pool, not
        # failing), its answer to a checkout would only send us to the other nodes
        :none ->
          if Cells.overflow?(cells), do: :overflow, else: :none
      end
    end
  end

  defp checkout_call(pool, session_id, affinity, deadline, mode) do
    timeout =
      case deadline do
        :infinity -> :infinity
        d -> max(d - now(), 0) + @call_margin
      end

    # A cluster pool answers :no_idle_here instead of queueing a call it could send elsewhere: the
    # caller (never the scheduler, which must not block on another) asks the other nodes' pools for
    # an idle worker, and queues here only when none has one. `:elsewhere`: the caller knows that
    # answer already (see claim_idle/2) and skips the question.
    case mode do
      {:try, how} ->
        checkout(pool, session_id, affinity, deadline, timeout, :try, how)

      {:elsewhere, how} ->
        elsewhere_or_queue(pool, pool, nil, affinity, deadline, timeout, how)

      :idle_only ->
        GenServer.call(pool, {:checkout, nil, affinity, deadline, :idle_only}, timeout)
    end
  catch
    :exit, {:timeout, _} -> {:error, :queue_timeout}
    :exit, _ -> {:error, :pool_not_running}
  end

  defp checkout(pool, session_id, affinity, deadline, timeout, mode, how) do
    case GenServer.call(pool, {:checkout, session_id, affinity, deadline, mode}, timeout) do
      # a session this node has not bound: another node may have it
      {:error, {:ask_cluster, group}} ->
        Cluster.checkout_bound(group, session_id, affinity, deadline, timeout)
        |> remember_remote(pool, session_id) ||
          checkout(pool, session_id, affinity, deadline, timeout, :first, how)

      {:error, {:no_idle_here, group}} ->
        elsewhere_or_queue(pool, group, session_id, affinity, deadline, timeout, how)

      reply ->
        reply
    end
  end

  defp elsewhere_or_queue(pool, group, session_id, affinity, deadline, timeout, how) do
    elsewhere(group, session_id, affinity, deadline, how)
    |> remember_remote(pool, session_id) ||
      GenServer.call(pool, {:checkout, session_id, affinity, deadline, :queue}, timeout)
  end

  # A call without a session that its caller can run whole on another node: one message there and
  # one back (Krait.Call.Elsewhere), instead of a checkout there and then the call's frames.
  defp elsewhere(group, nil, _affinity, _deadline, {:run_elsewhere, run}) do
    Enum.find_value(Cluster.by_idle(group), fn pid ->
      case run.(node(pid), group) do
        {:ran, _} = ran -> ran
        :declined -> nil
      end
    end)
  end

  defp elsewhere(group, session_id, affinity, deadline, _how),
    do: Cluster.checkout_elsewhere(group, session_id, affinity, deadline)

  # The caller's own pool notes which node serves a session bound elsewhere, so that the session's
  # calls fail as their worker's death when that node goes down.
  defp remember_remote({:ok, %Lease{pool: remote}} = reply, pool, session) when session != nil do
    GenServer.cast(pool, {:remote_session, session, node(remote)})
    reply
  end

  defp remember_remote(reply, _pool, _session), do: reply

  @doc """
  Returns a leased worker to the pool. `:lost` says the call failed because the worker's process or
  connection died: the worker leaves the pool at once instead of becoming idle. Unknown or already
  returned leases are ignored.
  """
  @spec checkin(Lease.t(), :ok | :lost) :: :ok
  def checkin(%Lease{pool: pool, ref: ref} = lease, outcome \\ :ok) do
    # nobody waiting: the worker is free for the next caller now, not once the scheduler reads this
    if outcome == :ok and lease.cell != nil, do: Cells.give_back(lease.cells, lease.cell)
    GenServer.cast(pool, {:checkin, ref, outcome})
  end

  defp now, do: System.monotonic_time(:millisecond)
end
