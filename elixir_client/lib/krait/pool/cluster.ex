defmodule Krait.Pool.Cluster do
  @moduledoc """
  Pools across a BEAM cluster: pools started with the same name and `cluster: true` on connected
  nodes (plain distributed Erlang) find each other through OTP's `:pg` (scope `Krait.Pool.Cluster`,
  started by the `:krait` application; group `{Krait.Pool, name}`), and act as one for calls without
  a session: a call runs on an idle worker of its own node when there is one, else on an idle worker
  of another node, else waits in its own node's queue.

  A lease from another node's pool holds that node's worker process and channel: the call talks to it
  directly (Erlang keeps the order of messages between two processes, so chunks arrive in order), and
  checks it in with that node's scheduler, which monitors the caller. When that node goes down, the
  monitors of its processes fire (`:noconnection`): a call in flight on it fails with `:worker`.

  Not yet: calls with a session stay on their own node's workers (a session is bound by the node that
  first served it).
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
  first lease, or `nil` when none has an idle worker.
  """
  @spec checkout_elsewhere(atom(), atom(), integer() | :infinity) ::
          {:ok, Krait.Pool.Lease.t()} | nil
  def checkout_elsewhere(name, affinity, deadline) do
    Enum.find_value(Enum.shuffle(others(name)), fn pid ->
      try do
        case GenServer.call(pid, {:checkout, nil, affinity, deadline, :idle_only}, 5_000) do
          {:ok, lease} -> {:ok, lease}
          _ -> nil
        end
      catch
        :exit, _ -> nil
      end
    end)
  end
end
