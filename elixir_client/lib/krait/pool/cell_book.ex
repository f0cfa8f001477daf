defmodule Krait.Pool.CellBook do
  @moduledoc """
  The scheduler's bookkeeping of the fast path's cells (`Krait.Pool.Cells`) as plain data: which
  cell indices are free, which worker owns each cell in use, and the last publication number. A
  publication number (`gen`) is never reused, so a claim made on a cell before it changed hands
  is told apart from a claim on its new worker.
  """

  defstruct free: [], owner: %{}, gen: 0

  @type index :: pos_integer()
  @type t :: %__MODULE__{
          free: [index()],
          owner: %{index() => String.t()},
          gen: non_neg_integer()
        }

  @doc "A book of `size` free cells."
  @spec new(pos_integer()) :: t()
  def new(size), do: %__MODULE__{free: Enum.to_list(1..size)}

  @doc """
  Worker `wid` takes a free cell: `{:ok, {index, gen}, t}` with the publication's new number, or
  `:full` when every cell is in use (the worker is then simply not offered to callers).
  """
  @spec assign(t(), String.t()) :: {:ok, {index(), pos_integer()}, t()} | :full
  def assign(%__MODULE__{free: []}, _wid), do: :full

  def assign(%__MODULE__{free: [index | rest]} = t, wid) do
    gen = t.gen + 1
    {:ok, {index, gen}, %{t | free: rest, owner: Map.put(t.owner, index, wid), gen: gen}}
  end

  @doc "Cell `index` is free again (its worker left callers' reach)."
  @spec release(t(), index()) :: t()
  def release(t, index) do
    if Map.has_key?(t.owner, index),
      do: %{t | free: [index | t.free], owner: Map.delete(t.owner, index)},
      else: t
  end

  @doc "The worker owning cell `index`, or nil."
  @spec owner(t(), index()) :: String.t() | nil
  def owner(t, index), do: Map.get(t.owner, index)
end
