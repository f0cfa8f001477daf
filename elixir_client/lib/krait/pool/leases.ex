defmodule Krait.Pool.Leases do
  @moduledoc """
  The pool's leases as plain data: which caller holds which worker, by lease ref. A lease the
  scheduler made is keyed by its caller's monitor; a lease a caller claimed itself
  (`Krait.Pool.Cells`) has its own ref, and its caller's monitor is mapped to it here, so a
  caller's `DOWN` finds its lease either way. Monitors and timers are made by the scheduler and
  only recorded here.
  """

  @typedoc "A lease: its worker, its session (nil: none), its expiry timer (nil: none), its caller's monitor."
  @type lease :: %{
          worker_id: String.t(),
          session: String.t() | nil,
          timer: reference() | nil,
          mon: reference()
        }
  @type t :: %__MODULE__{by_ref: %{reference() => lease()}, mons: %{reference() => reference()}}
  defstruct by_ref: %{}, mons: %{}

  @doc "No lease."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc "Lease `ref` starts (its caller's monitor `lease.mon` maps to it when it is not `ref`)."
  @spec put(t(), reference(), lease()) :: t()
  def put(t, ref, %{mon: mon} = lease) do
    mons = if mon == ref, do: t.mons, else: Map.put(t.mons, mon, ref)
    %{t | by_ref: Map.put(t.by_ref, ref, lease), mons: mons}
  end

  @doc "Lease `ref`, or nil."
  @spec get(t(), reference()) :: lease() | nil
  def get(t, ref), do: Map.get(t.by_ref, ref)

  @doc "Lease `ref` ends: `{the lease or nil, t}`."
  @spec delete(t(), reference()) :: {lease() | nil, t()}
  def delete(t, ref) do
    case Map.pop(t.by_ref, ref) do
      {nil, _} -> {nil, t}
      {lease, by_ref} -> {lease, %{t | by_ref: by_ref, mons: Map.delete(t.mons, lease.mon)}}
    end
  end

  @doc """
  Monitor `mon` fired: the ref to look up (the lease ref of a claimed lease's caller, otherwise
  `mon` itself, which may be a scheduler-made lease, a waiter or a worker).
  """
  @spec ref_of(t(), reference()) :: reference()
  def ref_of(t, mon), do: Map.get(t.mons, mon, mon)

  @doc "The sessions with a call in flight (kept by the session sweep)."
  @spec sessions(t()) :: MapSet.t(String.t() | nil)
  def sessions(t), do: MapSet.new(t.by_ref, fn {_ref, lease} -> lease.session end)
end
