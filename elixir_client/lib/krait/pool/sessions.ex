defmodule Krait.Pool.Sessions do
  @moduledoc """
  A pool's session table as plain data: which worker each session is bound to (made when its first
  call is given a worker, refreshed by each call), and, in a cluster pool, which other node serves
  the sessions this node's callers used there. Both expire `session_ttl` after their last use
  (`sweep/3`), except sessions with a call in flight. Times are the caller's monotonic milliseconds.
  """

  defstruct bound: %{}, remote: %{}

  @type binding :: %{worker: String.t(), used: integer()}
  @type remote :: %{node: node(), used: integer()}
  @type t :: %__MODULE__{bound: %{String.t() => binding()}, remote: %{String.t() => remote()}}

  @doc "An empty table."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc "The worker session `sid` is bound to, or nil."
  @spec worker(t(), String.t()) :: String.t() | nil
  def worker(%__MODULE__{bound: b}, sid) do
    case b do
      %{^sid => %{worker: wid}} -> wid
      _ -> nil
    end
  end

  @doc "Whether session `sid` is bound on this node."
  @spec bound?(t(), String.t()) :: boolean()
  def bound?(%__MODULE__{bound: b}, sid), do: is_map_key(b, sid)

  @doc "How many sessions are bound."
  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{bound: b}), do: map_size(b)

  @doc """
  A call of session `sid` was given worker `wid`: binds the session there if it is not bound yet,
  and marks it used at `now` (an existing binding keeps its worker).
  """
  @spec touch(t(), String.t() | nil, String.t(), integer()) :: t()
  def touch(t, nil, _wid, _now), do: t

  def touch(%__MODULE__{bound: b} = t, sid, wid, now) do
    case b do
      %{^sid => binding} -> %{t | bound: Map.put(b, sid, %{binding | used: now})}
      _ -> %{t | bound: Map.put(b, sid, %{worker: wid, used: now})}
    end
  end

  @doc "Drops session `sid`'s binding (its next call picks a worker afresh)."
  @spec forget(t(), String.t()) :: t()
  def forget(%__MODULE__{bound: b} = t, sid), do: %{t | bound: Map.delete(b, sid)}

  @doc "Drops every binding to worker `wid` (recycled: its sessions start afresh elsewhere)."
  @spec forget_worker(t(), String.t()) :: t()
  def forget_worker(%__MODULE__{bound: b} = t, wid),
    do: %{t | bound: for({sid, x} <- b, x.worker != wid, into: %{}, do: {sid, x})}

  @doc "Notes that session `sid` is served by `node` (a cluster pool's session bound elsewhere)."
  @spec put_remote(t(), String.t(), node(), integer()) :: t()
  def put_remote(%__MODULE__{remote: r} = t, sid, node, now),
    do: %{t | remote: Map.put(r, sid, %{node: node, used: now})}

  @doc "The node serving session `sid` elsewhere, or nil."
  @spec remote_node(t(), String.t()) :: node() | nil
  def remote_node(%__MODULE__{remote: r}, sid) do
    case r do
      %{^sid => %{node: node}} -> node
      _ -> nil
    end
  end

  @doc """
  Drops bindings and remote entries unused since `cutoff`, except the sessions in `in_flight` (a
  call of theirs runs now).
  """
  @spec sweep(t(), integer(), MapSet.t()) :: t()
  def sweep(%__MODULE__{bound: b, remote: r}, cutoff, in_flight) do
    %__MODULE__{
      bound:
        for(
          {id, s} <- b,
          s.used > cutoff or MapSet.member?(in_flight, id),
          into: %{},
          do: {id, s}
        ),
      remote: for({id, s} <- r, s.used > cutoff, into: %{}, do: {id, s})
    }
  end
end
