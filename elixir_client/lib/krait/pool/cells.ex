defmodule Krait.Pool.Cells do
  @moduledoc """
  Checkout without a scheduler round trip: a pool whose workers take one call each publishes them
  in an `:atomics` array (one cell per worker) and a public ETS table (the worker behind each cell,
  and the claims in flight), found through `:persistent_term`. A caller without a session claims an
  idle cell itself; the scheduler learns of it by a cast and takes the lease on from there
  (monitor, lease expiry, recycling counts) as if it had handed the worker out.

  A cell is one integer: the publication's generation (a worker's cell, never reused for another
  worker), a claim counter, and a state:

    * `:off`: nothing to claim (worker leased or not offered: starting, due for recycling, gone);
    * `:idle`: the scheduler offers the worker: a caller or the scheduler may take it, by
      compare-and-swap, so exactly one does;
    * `:claimed`: a caller took it; its claim (pid, lease ref, deadline) is in the ETS table under
      `{:claim, index, gen, counter}`, written *before* the swap, so the scheduler can always adopt a
      claim whose caller has not told it yet (or never will: killed right after the swap);
    * `:leased`: the scheduler took it.

  The holder of a lease gives its worker back itself when nobody waits (`give_back/2`: `:leased` or
  its own `:claimed` -> `:idle`), before its checkin reaches the scheduler; the counter in its
  lease makes sure only the lease's holder can.

  Only the scheduler moves a cell out of `:claimed` and `:leased`, and only it makes a cell
  `:idle`: it does so only when no caller waits that this worker could serve, so waiters go first.
  """

  import Bitwise

  @off 0
  @idle 1
  @claimed 2
  @leased 3

  @enforce_keys [:cells, :table, :pid, :size]
  defstruct [:cells, :table, :pid, :size]

  @type t :: %__MODULE__{
          cells: :atomics.atomics_ref(),
          table: :ets.tid(),
          pid: pid(),
          size: pos_integer()
        }
  @type state :: :off | :idle | :claimed | :leased
  @type claim :: {index :: pos_integer(), gen :: pos_integer(), counter :: non_neg_integer()}

  ## The cell encoding (pure)

  @doc "The integer of a cell: generation, claim counter, state."
  @spec encode(non_neg_integer(), non_neg_integer(), state()) :: integer()
  def encode(gen, counter, state),
    do: gen <<< 34 ||| (counter &&& 0xFFFFFFFF) <<< 2 ||| state_code(state)

  @doc "A cell's integer as `{gen, counter, state}`."
  @spec decode(integer()) :: {non_neg_integer(), non_neg_integer(), state()}
  def decode(v), do: {v >>> 34, v >>> 2 &&& 0xFFFFFFFF, code_state(v &&& 3)}

  defp state_code(:off), do: @off
  defp state_code(:idle), do: @idle
  defp state_code(:claimed), do: @claimed
  defp state_code(:leased), do: @leased

  defp code_state(@off), do: :off
  defp code_state(@idle), do: :idle
  defp code_state(@claimed), do: :claimed
  defp code_state(@leased), do: :leased

  ## The scheduler's side

  @doc "A pool's cells (`size` of them), published under `name` for its callers."
  @spec new(atom(), pos_integer()) :: t()
  def new(name, size) do
    t = %__MODULE__{
      # two more: the number of callers waiting (see set_waiting/2), and whether a call without a
      # session goes to other nodes first (see set_overflow/2)
      cells: :atomics.new(size + 2, signed: false),
      table:
        :ets.new(__MODULE__, [:set, :public, read_concurrency: true, write_concurrency: true]),
      pid: self(),
      size: size
    }

    :persistent_term.put({__MODULE__, name}, t)
    t
  end

  @doc "Removes the published cells of pool `name` (its scheduler stops)."
  @spec unpublish(atom()) :: :ok
  def unpublish(name) do
    :persistent_term.erase({__MODULE__, name})
    :ok
  end

  @doc """
  Publishes worker `wid` in cell `index` as generation `gen`, `:off` (nothing to claim yet). The
  worker's row is written before the cell, so a caller that wins the cell finds it.
  """
  @spec publish(t(), pos_integer(), pos_integer(), {String.t(), pid(), pid(), module()}) :: :ok
  def publish(t, index, gen, {wid, pid, conn, channel}) do
    :ets.insert(t.table, {index, gen, wid, pid, conn, channel})
    :atomics.put(t.cells, index, encode(gen, 0, :off))
  end

  @doc """
  Takes a cell's worker out of reach (gone, retiring, due for recycling): `{:claimed, claim, {pid,
  ref, deadline}}` when a caller had claimed it and not given it back (the scheduler adopts or
  drops that claim), else `:ok`. Its row goes, and the claims of callers that have given it back
  already (their calls are over; their casts find nothing).
  """
  @spec withdraw(t(), pos_integer()) ::
          {:claimed, claim(), {pid(), reference(), integer() | :infinity}} | :ok
  def withdraw(t, index) do
    old = :atomics.exchange(t.cells, index, 0)
    :ets.delete(t.table, index)
    {gen, c, state} = decode(old)
    held = if state == :claimed, do: take_claim(t, index, gen, c)
    :ets.match_delete(t.table, {{:claim, index, gen, :_}, :_, :_, :_})

    case held do
      nil -> :ok
      row -> {:claimed, {index, gen, c}, row}
    end
  end

  @doc """
  Offers a cell's worker (`:off` or `:leased` -> `:idle`): only the scheduler does this. A cell
  claimed meanwhile stays claimed (its claim is on its way to the scheduler).
  """
  @spec offer(t(), pos_integer()) :: :ok
  def offer(t, index) do
    case decode(:atomics.get(t.cells, index)) do
      # callers only swap :idle cells, so nobody else writes these
      {gen, c, state} when state in [:off, :leased] ->
        :atomics.put(t.cells, index, encode(gen, c, :idle))

      _ ->
        :ok
    end
  end

  @doc """
  The scheduler gives a cell's worker to a call: `{:ok, counter}` (the cell is `:leased` under a
  new claim counter, which the lease carries so that only its holder can give it back, see
  `give_back/2`), or `{:claimed, claim}` when a caller has claimed it first (the scheduler adopts
  that claim).
  """
  @spec take(t(), pos_integer()) :: {:ok, non_neg_integer()} | {:claimed, claim()}
  def take(t, index) do
    v = :atomics.get(t.cells, index)

    case decode(v) do
      {gen, c, :claimed} ->
        {:claimed, {index, gen, c}}

      {gen, c, _} ->
        counter = c + 1 &&& 0xFFFFFFFF

        case :atomics.compare_exchange(t.cells, index, v, encode(gen, counter, :leased)) do
          :ok -> {:ok, counter}
          # a caller claimed it between the read and the swap
          _ -> take(t, index)
        end
    end
  end

  @doc """
  The scheduler publishes how many callers wait: while any does, callers claim nothing and give
  nothing back themselves (the scheduler hands freed workers to the waiters, first come first
  served).
  """
  @spec set_waiting(t(), non_neg_integer()) :: :ok
  def set_waiting(t, n), do: :atomics.put(t.cells, t.size + 1, n)

  @doc "How many callers wait (as last published by the scheduler)."
  @spec waiting(t()) :: non_neg_integer()
  def waiting(t), do: :atomics.get(t.cells, t.size + 1)

  @doc """
  A cluster pool's scheduler publishes whether a call without a session, placed now, would be sent
  to other nodes' idle workers (no worker idle here, the pool not failing): a caller that finds no
  idle cell then asks the other nodes at once instead of asking its scheduler first (see
  `Krait.Pool.Checkout`). Always false in a pool that is not a cluster pool.
  """
  @spec set_overflow(t(), boolean()) :: :ok
  def set_overflow(t, overflow?),
    do: :atomics.put(t.cells, t.size + 2, if(overflow?, do: 1, else: 0))

  @doc "Whether calls without a session overflow to other nodes (as last published by the scheduler)."
  @spec overflow?(t()) :: boolean()
  def overflow?(t), do: :atomics.get(t.cells, t.size + 2) == 1

  @doc """
  The holder of lease `{index, gen, counter}` gives its worker back at once when nobody waits: the
  cell becomes `:idle` without waiting for the scheduler to read the checkin (which still follows,
  for its books). Should a waiter have arrived meanwhile, it takes the cell back unless another
  caller claimed it already; the scheduler then serves the waiter from the checkin. A lease the
  scheduler took back already (expired) no longer matches its cell, and nothing happens.
  """
  @spec give_back(t(), {pos_integer(), pos_integer(), non_neg_integer()}) :: :ok
  def give_back(t, {index, gen, counter}) do
    idle = encode(gen, counter, :idle)

    # leased by the scheduler, or still claimed (the scheduler has not read the claim yet)
    with 0 <- waiting(t),
         held when held != nil <- swap_any(t, index, [:leased, :claimed], gen, counter, idle),
         n when n > 0 <- waiting(t) do
      # a waiter arrived meanwhile: take it back for the scheduler to hand over, unless a caller
      # claimed it already
      :atomics.compare_exchange(t.cells, index, idle, encode(gen, counter, :leased))
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc """
  Ends a claim on the scheduler's side: the claimer's `{pid, ref, deadline}`, or nil when the claim
  was already taken over (adopted, or its worker gone). Each claim is taken over exactly once.
  """
  @spec take_claim(t(), pos_integer(), pos_integer(), non_neg_integer()) ::
          {pid(), reference(), integer() | :infinity} | nil
  def take_claim(t, index, gen, counter) do
    case :ets.take(t.table, {:claim, index, gen, counter}) do
      [{_, pid, ref, deadline}] -> {pid, ref, deadline}
      [] -> nil
    end
  end

  @doc """
  After a caller's claim is taken over: its cell is `:leased` (the scheduler's again), unless the
  caller gave it back already or it moved on.
  """
  @spec claimed_to_leased(t(), pos_integer(), pos_integer(), non_neg_integer()) :: :ok
  def claimed_to_leased(t, index, gen, counter) do
    claimed = encode(gen, counter, :claimed)
    _ = :atomics.compare_exchange(t.cells, index, claimed, encode(gen, counter, :leased))
    :ok
  end

  defp swap_any(_t, _index, [], _gen, _counter, _new), do: nil

  defp swap_any(t, index, [state | rest], gen, counter, new) do
    case :atomics.compare_exchange(t.cells, index, encode(gen, counter, state), new) do
      :ok -> state
      _ -> swap_any(t, index, rest, gen, counter, new)
    end
  end

  ## The caller's side

  @doc "The published cells of pool `name` when its scheduler is alive, else nil."
  @spec lookup(term()) :: t() | nil
  def lookup(name) when is_atom(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      %__MODULE__{pid: pid} = t -> if Process.alive?(pid), do: t
      nil -> nil
    end
  end

  def lookup(_pool), do: nil

  @doc """
  Claims an idle worker for a call made by the calling process with lease ref `ref`: `{:ok, claim,
  worker}` (worker: `{wid, pid, conn, channel}`), or `:none` when no cell is idle. The caller then
  tells the scheduler (`{:claimed, index, gen, counter}`). `{:withdrawn, claim}`: the worker was taken
  out of reach right after the claim; the caller checks the lease `ref` in and asks the scheduler.
  """
  @spec claim(t(), reference(), integer() | :infinity) ::
          {:ok, claim(), {String.t(), pid(), pid(), module()}} | {:withdrawn, claim()} | :none
  def claim(t, ref, deadline) do
    if waiting(t) == 0, do: claim_first(t, ref, deadline), else: :none
  rescue
    # the scheduler went away and its table with it
    ArgumentError -> :none
  end

  defp claim_first(t, ref, deadline) do
    # start at a point of our own so that callers spread over the cells
    start = :erlang.phash2(ref, t.size)
    claim_from(t, ref, deadline, start, t.size)
  end

  defp claim_from(_t, _ref, _deadline, _i, 0), do: :none

  defp claim_from(t, ref, deadline, i, left) do
    index = i + 1
    v = :atomics.get(t.cells, index)

    with {:ok, {_, gen, _} = claim} <- claim_seen(t, index, v, ref, deadline) do
      case :ets.lookup(t.table, index) do
        [{_, ^gen, wid, pid, conn, channel}] ->
          {:ok, claim, {wid, pid, conn, channel}}

        # withdrawn right after our swap (its worker gone, retiring or due for recycling): the
        # scheduler adopted or dropped our claim; the caller hands the lease back
        _ ->
          {:withdrawn, claim}
      end
    else
      _ -> claim_from(t, ref, deadline, rem(i + 1, t.size), left - 1)
    end
  end

  @doc """
  Claims cell `index` as the caller last read it (`seen`, the cell's integer): `{:ok, claim}` when
  that read was `:idle` and the swap wins, else `:lost`. The claim's row is written before the swap
  (see the moduledoc); a row left by a caller that died *before* its swap is cleared and the claim
  tried again, while the row of one that died *after* it stays: it is the scheduler's to adopt.
  """
  @spec claim_seen(t(), pos_integer(), integer(), reference(), integer() | :infinity) ::
          {:ok, claim()} | :lost
  def claim_seen(t, index, seen, ref, deadline) do
    case decode(seen) do
      {gen, c, :idle} -> claim_cell(t, index, seen, gen, c + 1 &&& 0xFFFFFFFF, ref, deadline)
      _ -> :lost
    end
  end

  defp claim_cell(t, index, v, gen, counter, ref, deadline) do
    key = {:claim, index, gen, counter}

    if :ets.insert_new(t.table, {key, self(), ref, deadline}) do
      case :atomics.compare_exchange(t.cells, index, v, encode(gen, counter, :claimed)) do
        :ok ->
          {:ok, {index, gen, counter}}

        _ ->
          :ets.delete(t.table, key)
          :lost
      end
    else
      # another caller races for this claim, or one that died left its row
      case :ets.lookup(t.table, key) do
        [{_, pid, _, _}] when node(pid) == node() ->
          if stale?(t, index, v, pid) do
            :ets.match_delete(t.table, {key, pid, :_, :_})
            claim_cell(t, index, v, gen, counter, ref, deadline)
          else
            :lost
          end

        _ ->
          :lost
      end
    end
  end

  # A dead claimer's row is stale only while the cell still holds what it held before that
  # claimer's swap: once swapped, the counter has moved on (claims count up), the claim is real and
  # the scheduler must find its row to adopt it (else the cell stays claimed for good).
  defp stale?(t, index, v, pid),
    do: not Process.alive?(pid) and :atomics.get(t.cells, index) == v
end
