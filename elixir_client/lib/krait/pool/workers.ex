defmodule Krait.Pool.Workers do
  @moduledoc """
  The pool's worker table as plain data: the workers by id, the idle ones (room for another call,
  longest idle first), the slots (which worker serves each, its replacement, restart backoff and
  the last start error), the monitor of each worker's process, and the workers due for recycling
  that wait for their turn (one replacement starts at a time).

  Every transition the scheduler (`Krait.Pool.Scheduler`) makes is a pure function here returning
  the new table, with a tagged result where the scheduler must act (start a process, set a timer,
  offer a cell). Monitors and timers are made by the scheduler and only recorded here. The rules
  of a single worker (picking, leases, backoff) are `Krait.Pool.Slots`.
  """

  alias Krait.Pool.Slots

  @type id :: String.t()
  @type slot_id :: term()
  @type status :: :starting | :idle | :busy | :retiring

  @typedoc "A worker: its process, its connection once ready, its leases and its recycling state."
  @type worker :: %{
          pid: pid(),
          slot: slot_id(),
          status: status(),
          conn: term(),
          channel: module() | nil,
          grpc_port: non_neg_integer() | nil,
          http_port: non_neg_integer() | nil,
          os_pid: non_neg_integer() | nil,
          leases: [reference()],
          calls: non_neg_integer(),
          given: non_neg_integer(),
          spawned_at: integer(),
          ready_at: integer() | nil,
          recycle: atom() | nil,
          age_limit: non_neg_integer() | nil,
          successor_of: id() | nil,
          rss_mb: number() | nil,
          cell: {pos_integer(), pos_integer()} | nil
        }

  @typedoc """
  A slot: its worker and generation, its replacement while one starts, failures in a row (the
  restart backoff), the pending restart's timer and delay, and the last start error.
  """
  @type slot :: %{
          worker_id: id(),
          gen: non_neg_integer(),
          timer: reference() | nil,
          failures: non_neg_integer(),
          logged_at: integer() | nil,
          backoff: pos_integer() | nil,
          restarts: non_neg_integer(),
          start_failed: boolean(),
          last_error: map() | nil,
          successor: id() | nil,
          recycles: non_neg_integer(),
          recycle_failures: non_neg_integer()
        }

  @type t :: %__MODULE__{
          workers: %{id() => worker()},
          idle: [id()],
          slots: %{slot_id() => slot()},
          mons: %{reference() => id()},
          recycle_queue: [id()]
        }
  defstruct workers: %{}, idle: [], slots: %{}, mons: %{}, recycle_queue: []

  @new_slot %{
    failures: 0,
    logged_at: nil,
    backoff: nil,
    restarts: 0,
    start_failed: false,
    last_error: nil,
    successor: nil,
    recycles: 0,
    recycle_failures: 0
  }

  @doc "An empty table."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  ## Queries

  @doc "Worker `wid`, or nil."
  @spec get(t(), id()) :: worker() | nil
  def get(t, wid), do: Map.get(t.workers, wid)

  @doc "The worker id a new call takes (see `Krait.Pool.Slots.pick_idle/2`), or nil."
  @spec pick_idle(t()) :: id() | nil
  def pick_idle(t), do: Slots.pick_idle(t.idle, t.workers)

  @doc "Whether worker `wid` is up with room for another of `cpw` calls."
  @spec room?(t(), id(), pos_integer()) :: boolean()
  def room?(t, wid, cpw), do: Slots.room?(t.workers[wid], cpw)

  @doc "Workers up (idle or busy)."
  @spec ready_count(t()) :: non_neg_integer()
  def ready_count(t), do: Slots.ready_count(t.workers)

  @doc "Whether no worker is up and every slot's last start failed (see `Krait.Pool.Slots.failing?/2`)."
  @spec failing?(t()) :: boolean()
  def failing?(t), do: Slots.failing?(t.workers, t.slots)

  @doc "`{monitor, id}` of the worker whose process is `pid`, or nil."
  @spec find_pid(t(), pid()) :: {reference(), id()} | nil
  def find_pid(t, pid), do: Enum.find(t.mons, fn {_mon, wid} -> t.workers[wid].pid == pid end)

  @doc "`{monitor, id}` of worker `wid`, or nil."
  @spec find_id(t(), id()) :: {reference(), id()} | nil
  def find_id(t, wid), do: Enum.find(t.mons, fn {_mon, w} -> w == wid end)

  @doc "`{monitor, id}` of a worker of `slot`, or nil."
  @spec find_slot(t(), slot_id()) :: {reference(), id()} | nil
  def find_slot(t, slot), do: Enum.find(t.mons, fn {_mon, wid} -> t.workers[wid].slot == slot end)

  @doc "The worker whose replacement is starting (at most one at a time), or nil."
  @spec replacement_starting(t()) :: id() | nil
  def replacement_starting(t), do: Enum.find_value(t.workers, fn {_wid, w} -> w.successor_of end)

  ## Slots

  @doc """
  Slot `slot` starts worker `wid`, its generation `gen` (a new slot starts fresh; a slot keeps its
  counts across restarts): `{:ok, t}`, or, with `{:error, reason}` from the start, `{:failed,
  error, t}` (the slot's failure counted, the scheduler schedules its restart).
  """
  @spec slot_started(t(), slot_id(), id(), non_neg_integer(), :ok | {:error, term()}) ::
          {:ok, t()} | {:failed, map(), t()}
  def slot_started(t, slot, wid, gen, result) do
    prev = Map.get(t.slots, slot, @new_slot)
    s = Map.merge(prev, %{worker_id: wid, gen: gen, timer: nil})

    case result do
      :ok ->
        {:ok, %{t | slots: Map.put(t.slots, slot, s)}}

      {:error, reason} ->
        error = %{worker_id: wid, reason: reason, output: ""}
        s = %{s | start_failed: true, last_error: error, failures: s.failures + 1}
        {:failed, error, %{t | slots: Map.put(t.slots, slot, s)}}
    end
  end

  @doc "A slot's restart is due: `{generation to start, t}` (timer cleared), or `:gone`."
  @spec restart_due(t(), slot_id()) :: {non_neg_integer(), t()} | :gone
  def restart_due(t, slot) do
    case t.slots[slot] do
      nil -> :gone
      s -> {s.gen + 1, put_in(t.slots[slot], %{s | timer: nil})}
    end
  end

  @doc "The delay before slot `slot`'s next start, by its failures in a row (`min` doubling to `max`)."
  @spec restart_delay(t(), slot_id(), pos_integer(), pos_integer()) :: pos_integer()
  def restart_delay(t, slot, min, max), do: Slots.restart_delay(t.slots[slot].failures, min, max)

  @doc "Slot `slot`'s restart is scheduled: its timer and delay."
  @spec restart_scheduled(t(), slot_id(), reference(), pos_integer()) :: t()
  def restart_scheduled(t, slot, timer, delay),
    do: update_in(t.slots[slot], &%{&1 | timer: timer, backoff: delay})

  @doc """
  Worker `w` of `slot` went down: one restart more, and one failure more in a row unless it had
  been up longer than `stable_after` ms (then the backoff starts over). A worker that was still
  starting made a failed start: `{:failed, error, t}` (`error` from `reason` and its `output`);
  otherwise `{:restart, t}`.
  """
  @spec went_down(t(), worker(), id(), term(), [String.t()], integer(), non_neg_integer()) ::
          {:restart, t()} | {:failed, map(), t()}
  def went_down(t, w, wid, reason, output, now, stable_after) do
    stable? = w.ready_at != nil and now - w.ready_at > stable_after
    s = t.slots[w.slot]
    s = %{s | failures: if(stable?, do: 1, else: s.failures + 1), restarts: s.restarts + 1}

    if w.status == :starting do
      error = start_error(wid, reason, output)
      s = %{s | start_failed: true, last_error: error}
      {:failed, error, put_in(t.slots[w.slot], s)}
    else
      {:restart, put_in(t.slots[w.slot], s)}
    end
  end

  @doc "The error of a failed start: the worker, the reason (unwrapped from `{:shutdown, _}`), its output."
  @spec start_error(id(), term(), [String.t()]) :: map()
  def start_error(wid, reason, output),
    do: %{worker_id: wid, reason: unwrap(reason), output: Enum.join(output, "\n")}

  defp unwrap({:shutdown, reason}), do: reason
  defp unwrap(reason), do: reason

  @doc "Slot `slot` logged a failed start at `now`."
  @spec logged(t(), slot_id(), integer()) :: t()
  def logged(t, slot, now), do: put_in(t.slots[slot].logged_at, now)

  @doc "Slot `slot` leaves (its endpoint is gone): `{its slot record, t}`."
  @spec drop_slot(t(), slot_id()) :: {slot() | nil, t()}
  def drop_slot(t, slot) do
    {s, slots} = Map.pop(t.slots, slot)
    {s, %{t | slots: slots}}
  end

  ## Workers

  @doc "Worker `wid` of `slot` was spawned as `pid` (monitored by `mon`): `:starting`."
  @spec add(t(), id(), reference(), pid(), slot_id(), id() | nil, integer()) :: t()
  def add(t, wid, mon, pid, slot, successor_of, now) do
    worker = %{
      pid: pid,
      slot: slot,
      status: :starting,
      conn: nil,
      channel: nil,
      grpc_port: nil,
      http_port: nil,
      os_pid: nil,
      leases: [],
      calls: 0,
      given: 0,
      spawned_at: now,
      ready_at: nil,
      recycle: nil,
      age_limit: nil,
      successor_of: successor_of,
      rss_mb: nil,
      # its fast-path cell {index, generation}, while callers may claim it
      cell: nil
    }

    %{t | workers: Map.put(t.workers, wid, worker), mons: Map.put(t.mons, mon, wid)}
  end

  @doc """
  Worker `wid`, process `pid`, reports ready with `info` (conn, channel, ports, os pid): `{:ok,
  worker, t}` (`:idle`, not yet in the idle list: each lease it can give is served in turn; its
  slot's last start did not fail), or `:ignore` when it is not `pid`'s starting worker.
  """
  @spec ready(t(), id(), pid(), map(), integer(), non_neg_integer() | nil) ::
          {:ok, worker(), t()} | :ignore
  def ready(t, wid, pid, info, now, age_limit) do
    case t.workers[wid] do
      %{pid: ^pid, status: :starting} = w ->
        w = %{
          w
          | status: :idle,
            conn: info.conn,
            channel: Map.get(info, :channel, Krait.GRPC.Connection),
            grpc_port: Map.get(info, :grpc_port),
            http_port: Map.get(info, :http_port),
            os_pid: info.os_pid,
            ready_at: now,
            age_limit: age_limit
        }

        t = %{t | workers: Map.put(t.workers, wid, w)}
        {:ok, w, update_in(t.slots[w.slot], &%{&1 | start_failed: false})}

      _ ->
        :ignore
    end
  end

  @doc """
  Worker `wid` is given lease `ref` (of `cpw` it can hold): it leaves the idle list, and goes
  back at its end while it has room for another call.
  """
  @spec give(t(), id(), reference(), pos_integer()) :: t()
  def give(t, wid, ref, cpw) do
    {w, full?} = Slots.give(t.workers[wid], ref, cpw)
    idle = List.delete(t.idle, wid)
    %{t | workers: Map.put(t.workers, wid, w), idle: if(full?, do: idle, else: idle ++ [wid])}
  end

  @doc """
  Lease `ref` of worker `wid` came back: `{:ok, worker, t}` (see `Krait.Pool.Slots.take_back/3`),
  or `:unknown` (the worker is gone or does not hold it).
  """
  @spec take_back(t(), id(), reference(), pos_integer()) :: {:ok, worker(), t()} | :unknown
  def take_back(t, wid, ref, cpw) do
    with %{} = w <- t.workers[wid],
         {:ok, w} <- Slots.take_back(w, ref, cpw) do
      {:ok, w, %{t | workers: Map.put(t.workers, wid, w)}}
    else
      _ -> :unknown
    end
  end

  @doc "Worker `wid` has room and nobody waits for it: `{:added, t}` at the idle list's end, or `:already` idle."
  @spec make_idle(t(), id()) :: {:added, t()} | :already
  def make_idle(t, wid) do
    if wid in t.idle, do: :already, else: {:added, %{t | idle: t.idle ++ [wid]}}
  end

  @doc "Worker `wid` leaves the idle list (it is given to a call placed elsewhere)."
  @spec unidle(t(), id()) :: t()
  def unidle(t, wid), do: %{t | idle: List.delete(t.idle, wid)}

  @doc "Empties the idle list: `{the ids that were in it, t}` (to serve each again)."
  @spec take_all_idle(t()) :: {[id()], t()}
  def take_all_idle(t), do: {t.idle, %{t | idle: []}}

  @doc "Sets field `key` of worker `wid` (cell, rss_mb, recycle, successor_of)."
  @spec put(t(), id(), atom(), term()) :: t()
  def put(t, wid, key, value), do: put_in(t.workers[wid][key], value)

  @doc "Worker `wid`'s process went down (monitor `mon`): `{wid, worker, t}`, out of every list."
  @spec remove(t(), reference()) :: {id(), worker(), t()}
  def remove(t, mon) do
    {wid, mons} = Map.pop(t.mons, mon)
    {w, workers} = Map.pop(t.workers, wid)
    {wid, w, %{t | mons: mons, workers: workers, idle: List.delete(t.idle, wid)}}
  end

  ## Recycling

  @doc """
  Worker `wid` is due for recycling (`reason`): it waits its turn for a replacement (see
  `next_recycle/1`), serving on.
  """
  @spec due(t(), id(), atom()) :: t()
  def due(t, wid, reason) do
    t = put_in(t.workers[wid].recycle, reason)
    %{t | recycle_queue: t.recycle_queue ++ [wid]}
  end

  @doc """
  Worker `wid`, due for recycling and still up, has its turn first again (its replacement failed
  and is retried): `{:ok, t}`, or `:ignore`.
  """
  @spec recycle_first(t(), id()) :: {:ok, t()} | :ignore
  def recycle_first(t, wid) do
    case t.workers[wid] do
      %{recycle: reason, status: status} when reason != nil and status in [:idle, :busy] ->
        {:ok, %{t | recycle_queue: [wid | List.delete(t.recycle_queue, wid)]}}

      _ ->
        :ignore
    end
  end

  @doc """
  The worker whose replacement starts now: `{:start, wid, t}` (out of the queue), or `{:wait, t}`
  while a replacement is starting or none is due. Workers gone or replaced meanwhile leave the
  queue.
  """
  @spec next_recycle(t()) :: {:start, id(), t()} | {:wait, t()}
  def next_recycle(%{recycle_queue: []} = t), do: {:wait, t}

  def next_recycle(%{recycle_queue: [wid | rest]} = t) do
    cond do
      replacement_starting(t) != nil ->
        {:wait, t}

      match?(%{status: s, recycle: r} when s in [:idle, :busy] and r != nil, t.workers[wid]) ->
        {:start, wid, %{t | recycle_queue: rest}}

      true ->
        next_recycle(%{t | recycle_queue: rest})
    end
  end

  @doc """
  The replacement of worker `wid` (in its slot, generation one up) is about to start: `{:start,
  successor id, t}`, or `:busy` when the slot has a replacement starting already.
  """
  @spec successor_id(t(), id(), String.t()) :: {:start, id(), non_neg_integer()} | :busy
  def successor_id(t, wid, prefix) do
    %{slot: slot} = t.workers[wid]
    s = t.slots[slot]

    if s.successor != nil,
      do: :busy,
      else: {:start, "#{prefix}-#{slot}.#{s.gen + 1}", s.gen + 1}
  end

  @doc """
  The replacement `successor` (generation `gen`) of slot `slot` started (`:ok`), or failed to
  (`{:error, reason}`: the slot keeps the error and no replacement).
  """
  @spec successor_started(t(), slot_id(), id(), non_neg_integer(), :ok | {:error, term()}) :: t()
  def successor_started(t, slot, successor, gen, :ok),
    do: update_in(t.slots[slot], &%{&1 | gen: gen, successor: successor})

  def successor_started(t, slot, successor, gen, {:error, reason}) do
    error = %{worker_id: successor, reason: reason, output: ""}
    update_in(t.slots[slot], &%{&1 | gen: gen, last_error: error})
  end

  @doc "The replacement for worker `wid` failed: `{failures in a row, t}` (the slot has none starting)."
  @spec successor_failed(t(), id()) :: {pos_integer(), t()}
  def successor_failed(t, wid) do
    slot = t.workers[wid].slot
    s = t.slots[slot]
    failures = s.recycle_failures + 1
    {failures, put_in(t.slots[slot], %{s | recycle_failures: failures, successor: nil})}
  end

  @doc """
  Replacement `successor` is ready: it is its slot's worker now. `{old worker id, t}`; the old
  worker is not changed here (see `retiring/2`).
  """
  @spec successor_ready(t(), id()) :: {id(), t()}
  def successor_ready(t, successor) do
    %{successor_of: old, slot: slot} = t.workers[successor]
    t = put_in(t.workers[successor].successor_of, nil)

    t =
      update_in(
        t.slots[slot],
        &%{
          &1
          | worker_id: successor,
            successor: nil,
            recycle_failures: 0,
            recycles: &1.recycles + 1
        }
      )

    {old, t}
  end

  @doc """
  Worker `wid` is replaced: `{:ok, worker, t}`, `:retiring` and out of the idle list, or
  `:gone` when it is not up (gone already, or retiring).
  """
  @spec retiring(t(), id()) :: {:ok, worker(), t()} | :gone
  def retiring(t, wid) do
    case t.workers[wid] do
      %{status: status} = w when status in [:idle, :busy] ->
        w = %{w | status: :retiring}
        {:ok, w, %{t | workers: Map.put(t.workers, wid, w), idle: List.delete(t.idle, wid)}}

      _ ->
        :gone
    end
  end

  @doc """
  The slot worker `w` went down while its replacement was starting: the replacement is the
  slot's worker now (`{:handed, t}`); otherwise `:none`. A slot gone (its endpoint left) is `:gone`.
  """
  @spec hand_to_successor(t(), worker()) :: {:handed, t()} | :none | :gone
  def hand_to_successor(t, w) do
    case t.slots[w.slot] do
      nil ->
        :gone

      %{successor: nil} ->
        :none

      %{successor: successor} = s ->
        t = put_in(t.workers[successor].successor_of, nil)
        {:handed, put_in(t.slots[w.slot], %{s | worker_id: successor, successor: nil})}
    end
  end

  @typedoc """
  What the scheduler does once a worker went down (see `down/6`): `:retired` (a replaced worker
  stopped; its slot has its replacement), `{:retry_successor, old}` (a replacement died before it
  was ready: `old` serves on and another replacement is tried after a backoff), `:handed` (the slot
  worker died while its replacement started: the replacement is the slot's worker now),
  `:slot_gone` (its endpoint left: no restart), `:restart` (the slot restarts after its backoff)
  and `{:failed, error}` (a failed start: the same, and the pool may now be failing).
  """
  @type down_effect ::
          :retired
          | {:retry_successor, id()}
          | :handed
          | :slot_gone
          | :restart
          | {:failed, map()}

  @doc """
  The worker of monitor `mon` went down (`reason`, its last `output` lines) at `now`: it leaves
  every list, and its slot's records follow (see `t:down_effect/0`). Returns `{wid, the worker as
  it was, effect, t}`; a replacement's failed start is its slot's `last_error`.
  """
  @spec down(t(), reference(), term(), [String.t()], integer(), non_neg_integer()) ::
          {id(), worker(), down_effect(), t()}
  def down(t, mon, reason, output, now, stable_after) do
    {wid, w, t} = remove(t, mon)
    {effect, t} = after_down(t, wid, w, {reason, output, now, stable_after})
    {wid, w, effect, t}
  end

  defp after_down(t, _wid, %{status: :retiring}, _why), do: {:retired, t}

  defp after_down(t, wid, %{successor_of: old} = w, {reason, output, _, _} = why)
       when old != nil do
    t = last_error(t, w.slot, start_error(wid, reason, output))

    case get(t, old) do
      %{status: status} when status in [:idle, :busy] -> {{:retry_successor, old}, t}
      # the worker it was to replace is gone too: the slot restarts as after any failed start
      _ -> restart_after(no_successor(t, w.slot), wid, w, why)
    end
  end

  defp after_down(t, wid, w, why) do
    case hand_to_successor(t, w) do
      :gone -> {:slot_gone, t}
      {:handed, t} -> {:handed, t}
      :none -> restart_after(t, wid, w, why)
    end
  end

  defp restart_after(t, wid, w, {reason, output, now, stable_after}) do
    case went_down(t, w, wid, reason, output, now, stable_after) do
      {:failed, error, t} -> {{:failed, error}, t}
      {:restart, t} -> {:restart, t}
    end
  end

  @doc "Slot `slot` has no replacement starting any more."
  @spec no_successor(t(), slot_id()) :: t()
  def no_successor(t, slot), do: put_in(t.slots[slot].successor, nil)

  @doc "Slot `slot`'s last start error is `error`."
  @spec last_error(t(), slot_id(), map()) :: t()
  def last_error(t, slot, error), do: put_in(t.slots[slot].last_error, error)

  ## Stats

  @doc """
  One row per slot (its worker, not a replacement still starting nor a retiring one; a slot
  without one is `:restarting`), and the retiring workers. `endpoint` labels a slot.
  """
  @spec stats(t(), (slot_id() -> String.t() | nil)) :: {[map()], [map()]}
  def stats(t, endpoint) do
    by_slot =
      for {wid, w} <- t.workers,
          w.status != :retiring and w.successor_of == nil,
          into: %{},
          do: {w.slot, {wid, w}}

    rows =
      for {slot, s} <- Enum.sort(t.slots) do
        row = %{
          slot: slot,
          endpoint: endpoint.(slot),
          restarts: s.restarts,
          recycles: s.recycles,
          replacement: s.successor,
          last_error: s.last_error
        }

        case by_slot[slot] do
          {wid, w} ->
            Map.merge(row, %{
              id: wid,
              status: w.status,
              pid: w.pid,
              os_pid: w.os_pid,
              grpc_port: w.grpc_port,
              http_port: w.http_port,
              in_flight: length(w.leases),
              calls: w.calls,
              recycle: w.recycle,
              rss_mb: w.rss_mb
            })

          nil ->
            Map.merge(row, %{
              id: nil,
              status: :restarting,
              pid: nil,
              os_pid: nil,
              grpc_port: nil,
              http_port: nil,
              in_flight: 0,
              calls: 0,
              recycle: nil,
              rss_mb: nil
            })
        end
      end

    retiring =
      for {wid, %{status: :retiring} = w} <- Enum.sort(t.workers),
          do: %{id: wid, slot: w.slot, reason: w.recycle, in_flight: length(w.leases), pid: w.pid}

    {rows, retiring}
  end
end
