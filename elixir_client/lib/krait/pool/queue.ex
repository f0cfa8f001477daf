defmodule Krait.Pool.Queue do
  @moduledoc """
  The pool's waiting callers as plain data (no process, no timers: `Krait.Pool.Scheduler` keeps
  those). Each waiter has an arrival number (`seq`) and waits either for any worker (the general
  queue) or for one particular worker (that worker's own queue, for a session bound to it). Both are
  `:gb_trees` keyed by `seq`, so insert, removal by arrival number and take-oldest are O(log n); the
  waiters themselves are found by their monitor ref (removal on timeout or the caller's death).

  A free worker takes the oldest waiter of its own queue and of the general queue together
  (`take_next/2`): FIFO across both.
  """

  defmodule Waiter do
    @moduledoc "A caller waiting for a worker: its request, arrival number, timer and queue."
    @enforce_keys [:ref, :from, :session, :affinity, :deadline]
    defstruct [
      :ref,
      :from,
      :session,
      :affinity,
      :deadline,
      :timer,
      seq: 0,
      queue: :any,
      first: false
    ]

    @type t :: %__MODULE__{
            ref: reference(),
            from: GenServer.from() | nil,
            session: String.t() | nil,
            affinity: atom(),
            deadline: integer() | :infinity,
            timer: reference() | nil,
            seq: non_neg_integer(),
            # :any (the general queue) or the worker id it waits for
            queue: :any | String.t(),
            # a first call of its session: follows the session's binding made while it waits
            first: boolean()
          }
  end

  defstruct waiters: %{}, general: :gb_trees.empty(), own: %{}, seq: 0

  @type t :: %__MODULE__{
          waiters: %{reference() => Waiter.t()},
          general: :gb_trees.tree(non_neg_integer(), reference()),
          own: %{String.t() => :gb_trees.tree(non_neg_integer(), reference())},
          seq: non_neg_integer()
        }

  @doc "An empty queue."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc "How many callers wait."
  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{waiters: w}), do: map_size(w)

  @doc "Whether the general queue (callers waiting for any worker) is empty."
  @spec general_empty?(t()) :: boolean()
  def general_empty?(%__MODULE__{general: g}), do: :gb_trees.is_empty(g)

  @doc "The waiter with monitor ref `ref`, or nil."
  @spec get(t(), reference()) :: Waiter.t() | nil
  def get(%__MODULE__{waiters: w}, ref), do: Map.get(w, ref)

  @doc "Every waiter, in no particular order."
  @spec waiters(t()) :: [Waiter.t()]
  def waiters(%__MODULE__{waiters: w}), do: Map.values(w)

  @doc """
  Whether a new caller may wait, at `now` (ms, the clock of its `deadline`): `:ok`,
  `{:error, :pool_saturated}` when `max_queue` callers wait already, or `{:error, :queue_timeout}`
  when its deadline has come (waiting would end before it began).
  """
  @spec admit(t(), non_neg_integer(), integer() | :infinity, integer()) ::
          :ok | {:error, :pool_saturated | :queue_timeout}
  def admit(q, max_queue, deadline, now) do
    cond do
      size(q) >= max_queue -> {:error, :pool_saturated}
      deadline != :infinity and deadline <= now -> {:error, :queue_timeout}
      true -> :ok
    end
  end

  @doc "A new arrival: gets the next arrival number, at the back of its queue (`waiter.queue`)."
  @spec push(t(), Waiter.t()) :: {Waiter.t(), t()}
  def push(%__MODULE__{seq: seq} = q, %Waiter{} = w) do
    w = %{w | seq: seq}
    {w, insert(%{q | seq: seq + 1}, w)}
  end

  @doc """
  Puts a waiter (back) in the queue its `queue` field names, keeping its arrival number: a waiter
  moved between queues keeps its place. It must not be queued already.
  """
  @spec insert(t(), Waiter.t()) :: t()
  def insert(q, %Waiter{queue: :any} = w),
    do: %{
      q
      | general: :gb_trees.insert(w.seq, w.ref, q.general),
        waiters: Map.put(q.waiters, w.ref, w)
    }

  def insert(q, %Waiter{queue: wid} = w) do
    tree = Map.get(q.own, wid, :gb_trees.empty())

    %{
      q
      | own: Map.put(q.own, wid, :gb_trees.insert(w.seq, w.ref, tree)),
        waiters: Map.put(q.waiters, w.ref, w)
    }
  end

  @doc "Removes the waiter with monitor ref `ref` (timeout, death): the waiter, or nil if none."
  @spec delete(t(), reference()) :: {Waiter.t() | nil, t()}
  def delete(q, ref) do
    case Map.pop(q.waiters, ref) do
      {nil, _} -> {nil, q}
      {w, waiters} -> {w, unlink(%{q | waiters: waiters}, w)}
    end
  end

  @doc """
  The oldest waiter that worker `wid` can serve (its own queue and the general queue together),
  removed from the queue; `:empty` when none waits.
  """
  @spec take_next(t(), String.t()) :: {Waiter.t(), t()} | :empty
  def take_next(q, wid) do
    own = Map.get(q.own, wid)
    own_seq = if own, do: elem(:gb_trees.smallest(own), 0)

    gen_seq =
      if :gb_trees.is_empty(q.general), do: nil, else: elem(:gb_trees.smallest(q.general), 0)

    cond do
      own_seq == nil and gen_seq == nil ->
        :empty

      gen_seq == nil or (own_seq != nil and own_seq < gen_seq) ->
        {_seq, ref, tree} = :gb_trees.take_smallest(own)
        {w, waiters} = Map.pop(q.waiters, ref)
        {w, put_own(%{q | waiters: waiters}, wid, tree)}

      true ->
        {_seq, ref, general} = :gb_trees.take_smallest(q.general)
        {w, waiters} = Map.pop(q.waiters, ref)
        {w, %{q | general: general, waiters: waiters}}
    end
  end

  @doc "Removes worker `wid`'s own queue: its waiters, oldest first (they are no longer queued)."
  @spec take_own(t(), String.t()) :: {[Waiter.t()], t()}
  def take_own(q, wid) do
    case Map.pop(q.own, wid) do
      {nil, _} ->
        {[], q}

      {tree, own} ->
        refs = :gb_trees.values(tree)

        {Enum.map(refs, &Map.fetch!(q.waiters, &1)),
         %{q | own: own, waiters: Map.drop(q.waiters, refs)}}
    end
  end

  @doc "Empties the queue: every waiter, in no particular order (arrival numbers go on counting)."
  @spec take_all(t()) :: {[Waiter.t()], t()}
  def take_all(q), do: {Map.values(q.waiters), %{new() | seq: q.seq}}

  defp unlink(q, %Waiter{queue: :any, seq: seq}),
    do: %{q | general: :gb_trees.delete_any(seq, q.general)}

  defp unlink(q, %Waiter{queue: wid, seq: seq}) do
    case q.own do
      %{^wid => tree} -> put_own(q, wid, :gb_trees.delete_any(seq, tree))
      _ -> q
    end
  end

  defp put_own(q, wid, tree) do
    if :gb_trees.is_empty(tree),
      do: %{q | own: Map.delete(q.own, wid)},
      else: %{q | own: Map.put(q.own, wid, tree)}
  end
end
