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
  monitors of its processes fire (`:noconnection`): a call in flight on it fails with `:worker`.

  Sessions: a session is bound by the node whose worker first served it. A call with a session its
  own node has not bound asks the other nodes first; the node that has it applies the affinity
  rules (`:hint`, `:strict_queue` waiting there, `:strict_fail_fast`) as it would for its own
  callers. Each node remembers which node serves the sessions its callers used elsewhere: when that
  node is down, a strict call gets `:session_worker_unavailable` (as when a local session's worker
  dies) and a `:hint` call starts the session afresh. A session's first call finds an idle worker
  anywhere in the cluster, whatever its affinity: `:strict_fail_fast` answers `:worker_busy` only
  when every node's workers are busy.
  """

  @scope __MODULE__

  @doc "Makes the calling scheduler a member of its pool's cluster group."
  @spec join(atom()) :: :ok
  def join(name), do: :pg.join(@scope, {Krait.Pool, name}, self())

  @doc "The schedulers of the pool `name` on the other nodes."
  @spec others(atom()) :: [pid()]
  def others(name) do
    for pid <- :pg.get_members(@scope, {Krait.Pool, name}), node(pid) != node(), do: pid
  end

  @doc """
  Asks the other nodes' pools, in turn, for an idle worker (they never queue the request): the
  first lease, or `nil` when none has an idle worker. A session's first call binds the session
  there.
  """
  @spec checkout_elsewhere(atom(), String.t() | nil, atom(), integer() | :infinity) ::
          {:ok, Krait.Pool.Lease.t()} | nil
  def checkout_elsewhere(name, session, affinity, deadline) do
    Enum.find_value(Enum.shuffle(others(name)), fn pid ->
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
