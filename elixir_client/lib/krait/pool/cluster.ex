defmodule Krait.Pool.Cluster do
  @moduledoc """
  Pools across a BEAM cluster: pools started with the same name and `cluster: true` on connected
  nodes (plain distributed Erlang) find each other through OTP's `:pg` (scope `Krait.Pool.Cluster`,
  started by the `:krait` application; group `{Krait.Pool, name}`), and act as one for calls without
  a session: a call runs on an idle worker of its own node when there is one, else on an idle worker
  of another node, else waits in its own node's queue (calls with a session: below).

  A lease from another node's pool holds that node's worker process and channel: the call talks to it
  directly (Erlang keeps the order of messages between two processes, so chunks arrive in order), and
  checks it in with that node's scheduler, which monitors the caller. When that node goes down, the
  monitors of its processes fire (`:noconnection`): a call in flight on it fails with `:worker`. A
  unary call without a session, input or handlers skips the lease: it is run whole on that node
  (`Krait.Call.Elsewhere`), one message there and one back.

  Sessions: a session is bound by the node whose worker first served it. A call with a session its
  own node has not bound asks the other nodes first; the node that has it applies the affinity
  rules (`:hint`, `:strict_queue` waiting there, `:strict_fail_fast`) as it would for its own
  callers. Each node remembers which node serves the sessions its callers used elsewhere: when that
  node is down, a strict call gets `:session_worker_unavailable` (as when a local session's worker
  dies) and a `:hint` call starts the session afresh. A session's first call finds an idle worker
  anywhere in the cluster, whatever its affinity: `:strict_fail_fast` answers `:worker_busy` only
  when every node's workers are busy.

  Each scheduler advertises that it has idle workers by membership of the group
  `{Krait.Pool, name, :idle}` (joined and left on its idle set's empty <-> non-empty transitions
  only): a call that overflows asks the advertising nodes first, usually one ask, and the others
  after them, as the signal can lag.
  """

  @scope __MODULE__

  @doc "Makes the calling scheduler a member of its pool's cluster group."
  @spec join(atom()) :: :ok
  def join(name), do: :pg.join(@scope, {Krait.Pool, name}, self())

  @doc """
  Advertises (or stops advertising) that the calling scheduler has idle workers: it joins or leaves
  the group `{Krait.Pool, name, :idle}`, on its idle set's empty <-> non-empty transitions only.
  """
  @spec advertise_idle(atom(), boolean()) :: :ok
  def advertise_idle(name, true), do: :pg.join(@scope, {Krait.Pool, name, :idle}, self())

  def advertise_idle(name, false) do
    # not a member (never advertised) is fine
    _ = :pg.leave(@scope, {Krait.Pool, name, :idle}, self())
    :ok
  end

  @doc "The schedulers of the pool `name` on the other nodes."
  @spec others(atom()) :: [pid()]
  def others(name) do
    for pid <- :pg.get_members(@scope, {Krait.Pool, name}), node(pid) != node(), do: pid
  end

  @doc """
  The other nodes' schedulers of pool `name`, those advertising idle workers first (each part
  shuffled, so that callers spread over them).
  """
  @spec by_idle(atom()) :: [pid()]
  def by_idle(name) do
    idle =
      for pid <- :pg.get_members(@scope, {Krait.Pool, name, :idle}), node(pid) != node(), do: pid

    rest = others(name) -- idle
    Enum.shuffle(idle) ++ Enum.shuffle(rest)
  end

  @doc """
  Asks the other nodes' pools, in turn, for an idle worker (they never queue the request): the
  first lease, or `nil` when none has an idle worker. Those advertising idle workers are asked
  first (one ask, usually); the others after them, as the signal may lag. A session's first call
  binds the session there.
  """
  @spec checkout_elsewhere(atom(), String.t() | nil, atom(), integer() | :infinity) ::
          {:ok, Krait.Pool.Lease.t()} | nil
  def checkout_elsewhere(name, session, affinity, deadline) do
    Enum.find_value(by_idle(name), fn pid ->
      case call(pid, {:checkout, session, affinity, deadline, :idle_only}, 5_000) do
        {:ok, lease} -> {:ok, lease}
        _ -> nil
      end
    end)
  end

  @doc """
  Finds the node whose pool has bound `session` and checks out there, with that pool's affinity
  rules (it may wait for the session's worker, or answer `:worker_busy`): its reply, or `nil` when
  no other node has bound the session.
  """
  @spec checkout_bound(atom(), String.t(), atom(), integer() | :infinity, timeout()) ::
          {:ok, Krait.Pool.Lease.t()} | {:error, term()} | nil
  def checkout_bound(name, session, affinity, deadline, timeout) do
    Enum.find_value(others(name), fn pid ->
      case call(pid, {:checkout, session, affinity, deadline, :if_bound}, timeout) do
        {:error, :not_bound} -> nil
        {:error, :unreachable} -> nil
        reply -> reply
      end
    end)
  end

  defp call(pid, request, timeout) do
    GenServer.call(pid, request, timeout)
  catch
    :exit, _ -> {:error, :unreachable}
  end
end
