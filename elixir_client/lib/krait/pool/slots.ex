defmodule Krait.Pool.Slots do
  @moduledoc """
  The rules of a single worker and slot, as pure functions over the worker table's `workers` map
  (worker id => worker) and its `idle` list (worker ids with room for another call, longest idle
  first), which `Krait.Pool.Workers` holds and changes:
  which idle worker a call takes, what a lease given or returned does to a worker, restart backoff,
  and when the pool counts as failing.
  """

  @type worker :: %{
          required(:status) => :starting | :idle | :busy | :retiring,
          required(:leases) => [reference()],
          optional(atom()) => term()
        }
  @type workers :: %{String.t() => worker()}

  @doc """
  The idle worker a new call takes: the longest idle, passing over workers due for recycling
  (waiting for their replacement) while another is idle, so that they take few calls past their
  limit; they still serve when no other worker can.
  """
  @spec pick_idle([String.t()], workers()) :: String.t() | nil
  def pick_idle([], _workers), do: nil
  def pick_idle([wid], _workers), do: wid

  def pick_idle([first | _] = idle, workers),
    do: Enum.find(idle, first, &(workers[&1].recycle == nil))

  @doc "Whether worker `w` (nil: gone) is up and has room for another of `calls_per_worker` calls."
  @spec room?(worker() | nil, pos_integer()) :: boolean()
  def room?(%{status: status, leases: leases}, cpw) when status in [:idle, :busy],
    do: length(leases) < cpw

  def room?(_w, _cpw), do: false

  @doc """
  Worker `w` is given lease `ref`: `{worker, full?}`, `:busy` when it now holds `calls_per_worker`
  leases; `given` counts the leases ever given (the recycling policy's call count).
  """
  @spec give(worker(), reference(), pos_integer()) :: {worker(), boolean()}
  def give(w, ref, cpw) do
    leases = [ref | w.leases]
    full? = length(leases) >= cpw
    {%{w | status: if(full?, do: :busy, else: :idle), leases: leases, given: w.given + 1}, full?}
  end

  @doc """
  Lease `ref` of worker `w` came back: the worker with one call more done, `:idle` again unless it
  is retiring or still holds `calls_per_worker` leases (a caller's claim that reached the
  scheduler before this lease's checkin, see `Krait.Pool.Cells`); `:unknown` when `w` does not hold
  `ref` (already dropped).
  """
  @spec take_back(worker(), reference(), pos_integer()) :: {:ok, worker()} | :unknown
  def take_back(%{leases: leases} = w, ref, cpw) when is_list(leases) do
    if ref in leases do
      leases = List.delete(leases, ref)

      status =
        cond do
          w.status == :retiring -> :retiring
          length(leases) >= cpw -> :busy
          true -> :idle
        end

      {:ok, %{w | status: status, leases: leases, calls: w.calls + 1}}
    else
      :unknown
    end
  end

  def take_back(_w, _ref, _cpw), do: :unknown

  @doc "Workers that are up (idle or busy)."
  @spec ready_count(workers()) :: non_neg_integer()
  def ready_count(workers), do: Enum.count(workers, fn {_, w} -> w.status in [:idle, :busy] end)

  @doc """
  The delay before a slot's next start after `failures` failures in a row: `min`, then doubling
  up to `max`.
  """
  @spec restart_delay(non_neg_integer(), pos_integer(), pos_integer()) :: pos_integer()
  def restart_delay(failures, min, _max) when failures <= 1, do: min
  def restart_delay(failures, min, max), do: Kernel.min(min * Integer.pow(2, failures - 1), max)

  @doc """
  A pool is failing when no worker is up and every slot's last start failed: nothing will serve
  the queue soon.
  """
  @spec failing?(workers(), %{term() => %{start_failed: boolean()}}) :: boolean()
  def failing?(workers, slots) do
    ready_count(workers) == 0 and map_size(slots) > 0 and
      Enum.all?(slots, fn {_slot, s} -> s.start_failed end)
  end
end
