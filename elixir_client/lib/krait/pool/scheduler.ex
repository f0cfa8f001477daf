defmodule Krait.Pool.Scheduler do
  @moduledoc """
  The pool's brain: hands workers out to callers and takes them back. It never runs a call itself;
  the caller talks to the worker's connection directly (see `Krait.Call`).

  It is the wiring (messages, monitors, timers, the fast path's cells, logs and telemetry) of pure
  modules that hold the pool's data and rules:

    * `Krait.Pool.Workers`: the workers (`:starting`, `:idle` with room for another call, `:busy`
      with `calls_per_worker` leases, `:retiring` once replaced), the idle list, the slots and
      their restart backoff, the recycling turn (one replacement starts at a time; the policy is
      `Krait.Pool.Recycle`);
    * `Krait.Pool.Placement`: which worker a call takes, given its session and affinity, and
      which waiters follow a session bound while they waited;
    * `Krait.Pool.Queue`: the callers waiting, FIFO, for any worker or for their session's;
    * `Krait.Pool.Sessions`: the session bindings and their TTL;
    * `Krait.Pool.CellBook`: which worker owns each fast-path cell;
    * `Krait.Pool.Scheduler.State`: the state itself, readiness and stats;
    * `Krait.Pool.Events`: the log lines and telemetry of the workers' lives.

  What it adds: every caller is monitored, so a worker comes back when its caller checks it in,
  dies, or holds it `lease_grace` past the call's deadline; each waiter has a timer at its
  deadline; a caller whose worker died checks its lease in as `:lost` (and a worker reports its
  own death), so no call is handed to a dead worker; when every slot's last start failed and no
  worker is up, the pool is *failing*: waiters and new callers get `{:workers_failing,
  last_error}` at once while restarts go on with backoff. A remote pool has a slot per endpoint,
  re-resolved for `dns://` names (`Krait.Pool.Endpoints`). A call without a session usually never
  reaches the scheduler before it runs (`Krait.Pool.Checkout`, `Krait.Pool.Cells`); with
  `cluster: true`, callers are sent to other nodes' idle workers (`Krait.Pool.Cluster`).
  """

  use GenServer
  require Logger

  alias Krait.Pool.{
    CellBook,
    Cells,
    Checkout,
    Endpoints,
    Events,
    Lease,
    Leases,
    Placement,
    Queue,
    Recycle,
    Sessions,
    Workers
  }

  alias Krait.Pool.Queue.Waiter
  alias Krait.Pool.Scheduler.State

  @type affinity :: :hint | :strict_queue | :strict_fail_fast
  @type deadline :: integer() | :infinity
  @type checkout_error ::
          :worker_busy
          | :session_worker_unavailable
          | :pool_saturated
          | :queue_timeout
          | :pool_not_running
          | {:workers_failing, map()}

  # A worker that stayed up this long has its restart backoff reset.
  @stable_after 10_000

  ## Client API

  @doc "Starts the scheduler of a pool, registered under the pool's name (see `Krait.Pool`)."
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(config) do
    GenServer.start_link(__MODULE__, config, name: config.name)
  end

  @doc "See `Krait.Pool.Checkout.checkout/5` (the caller's side of a checkout)."
  @spec checkout(GenServer.server(), String.t() | nil, affinity(), deadline(), Checkout.how()) ::
          {:ok, Lease.t()} | {:ran, term()} | {:error, checkout_error() | :no_idle}
  defdelegate checkout(pool, session_id, affinity, deadline, how \\ :lease), to: Checkout

  @doc "See `Krait.Pool.Checkout.checkin/2`."
  @spec checkin(Lease.t(), :ok | :lost) :: :ok
  defdelegate checkin(lease, outcome \\ :ok), to: Checkout

  @doc "Drops a session's binding (the session's next call picks a worker again)."
  @spec forget_session(GenServer.server(), String.t()) :: :ok
  def forget_session(pool, session_id), do: GenServer.call(pool, {:forget_session, session_id})

  @doc "See `Krait.Pool.stats/1`."
  @spec stats(GenServer.server()) :: map()
  def stats(pool), do: GenServer.call(pool, :stats)

  @doc "See `Krait.Pool.await_ready/2`."
  @spec await_ready(GenServer.server(), timeout()) ::
          :ok | {:error, :timeout | {:workers_failing, map()}}
  def await_ready(pool, timeout) do
    GenServer.call(pool, :await_ready, timeout)
  catch
    :exit, {:timeout, _} -> {:error, :timeout}
  end

  ## Server

  @impl true
  def init(config) do
    Logger.metadata(krait_pool: inspect(config.name))

    state = init_cells(State.new(config))

    state =
      if config.endpoints,
        do: resolve_endpoints(state),
        else: Enum.reduce(1..config.size, state, fn slot, acc -> start_worker(acc, slot, 0) end)

    if config.cluster, do: Krait.Pool.Cluster.join(config.name)
    schedule_session_sweep(config)
    {:ok, state}
  end

  # Each callback's work is done by do_call/3, do_cast/2 and do_info/2; then what callers and other
  # nodes read without asking is brought up to date (see published/1).
  @impl true
  def handle_call(msg, from, state), do: msg |> do_call(from, state) |> published()

  @impl true
  def handle_cast(msg, state), do: msg |> do_cast(state) |> published()

  @impl true
  def handle_info(msg, state), do: msg |> do_info(state) |> published()

  # Where the call goes, and a cluster pool's answers for calls another node may serve, are
  # Krait.Pool.Placement's; here the caller is monitored, its lease started or its wait queued.
  defp do_call({:checkout, session, affinity, deadline, mode}, {pid, _} = from, state) do
    cluster = if state.config.cluster, do: %{name: state.name, nodes: Node.list()}

    {placed, sessions} =
      Placement.checkout(
        session,
        affinity,
        mode,
        state.sessions,
        state.table,
        state.failing,
        cluster
      )

    state = %{state | sessions: sessions}

    case placed do
      {:assign, wid} ->
        case take_idle(state, wid) do
          {:ok, cell, state} ->
            ref = Process.monitor(pid)
            req = %{ref: ref, session: session, deadline: deadline}
            {:reply, {:ok, lease(state, ref, wid, cell, pid)}, assign(state, req, wid)}

          # a caller claimed it first: place the call again
          {:taken, state} ->
            do_call({:checkout, session, affinity, deadline, mode}, from, state)
        end

      {:enqueue, queue} ->
        ref = Process.monitor(pid)
        req = %{ref: ref, from: from, session: session, affinity: affinity, deadline: deadline}
        enqueue(state, req, queue)

      {:error, reason} ->
        {:reply, {:error, reason}, state}
    end
  end

  defp do_call({:forget_session, session_id}, _from, state) do
    {:reply, :ok, %{state | sessions: Sessions.forget(state.sessions, session_id)}}
  end

  defp do_call(:stats, _from, state), do: {:reply, State.stats(state), state}

  defp do_call(:await_ready, from, state) do
    cond do
      State.ready?(state) -> {:reply, :ok, state}
      state.failing -> {:reply, {:error, {:workers_failing, state.failing}}, state}
      true -> {:noreply, %{state | awaiting: [from | state.awaiting]}}
    end
  end

  defp do_cast({:remote_session, session, node}, state) do
    {:noreply, %{state | sessions: Sessions.put_remote(state.sessions, session, node, now())}}
  end

  # A caller claimed an idle worker (see Krait.Pool.Cells): its lease starts here, unless the claim
  # was adopted already or its worker is gone.
  defp do_cast({:claimed, index, gen, counter}, state) do
    with %Cells{} = cells <- state.cells,
         {pid, ref, deadline} <- Cells.take_claim(cells, index, gen, counter),
         wid when wid != nil <- CellBook.owner(state.book, index),
         %{cell: {^index, ^gen}} <- Workers.get(state.table, wid) do
      {:noreply, start_claimed(state, wid, {index, gen, counter}, {pid, ref, deadline})}
    else
      _ -> {:noreply, state}
    end
  end

  defp do_cast({:checkin, ref, outcome}, state) do
    case end_lease(state, ref) do
      {nil, state} -> {:noreply, state}
      {lease, state} when outcome == :lost -> {:noreply, lost(state, lease.worker_id)}
      {lease, state} -> {:noreply, take_back(state, ref, lease)}
    end
  end

  defp do_info({:krait_worker_ready, pid, info}, state) do
    age_limit = Recycle.age_limit(state.config.recycle)

    case Workers.ready(state.table, info.worker_id, pid, info, now(), age_limit) do
      {:ok, w, table} ->
        Events.ready(state.name, info.worker_id, info)
        state = %{state | table: table, failing: nil, startup_ms: now() - w.spawned_at}
        state = if w.successor_of, do: hand_over_slot(state, info.worker_id), else: state
        state = publish_cell(state, info.worker_id)
        schedule_age_check(state, info.worker_id)
        # a replacement is ready: the next worker waiting for its turn gets one
        state = next_recycle(state)
        # one serve per lease it can give: each hands it to a waiter or lists it as idle
        state =
          Enum.reduce(1..state.config.calls_per_worker, state, fn _, acc ->
            serve(acc, info.worker_id)
          end)

        {:noreply, notify_awaiting(state)}

      :ignore ->
        {:noreply, state}
    end
  end

  # A worker reports its death before cleaning up (stopping its OS process can take the shutdown
  # grace): it leaves the pool now, not when its DOWN arrives.
  defp do_info({:krait_worker_down, pid, reason, output}, state) do
    case Workers.find_pid(state.table, pid) do
      {mon, _wid} ->
        Process.demonitor(mon, [:flush])
        {:noreply, worker_down(state, mon, reason, output)}

      nil ->
        {:noreply, state}
    end
  end

  defp do_info({:DOWN, mon, :process, _pid, reason}, state) do
    # a claimed lease's caller: its monitor is not its lease ref
    ref = Leases.ref_of(state.leases, mon)

    cond do
      Map.has_key?(state.table.mons, ref) ->
        {:noreply, worker_down(state, ref, reason, [])}

      (lease = Leases.get(state.leases, ref)) != nil ->
        # The caller died holding a worker: its gRPC stream is cancelled by the connection (which
        # monitors the stream's owner); the worker is free again right now.
        Logger.debug("Krait caller died during a call; worker #{lease.worker_id} returned",
          worker_id: lease.worker_id
        )

        {:noreply, release(state, ref)}

      Queue.get(state.queue, ref) != nil ->
        {:noreply, drop_waiter(state, ref)}

      true ->
        {:noreply, state}
    end
  end

  defp do_info({:timeout, tref, {:queue_timeout, ref}}, state) do
    case Queue.get(state.queue, ref) do
      %{timer: ^tref, from: from} ->
        Process.demonitor(ref, [:flush])
        GenServer.reply(from, {:error, :queue_timeout})
        {:noreply, drop_waiter(state, ref)}

      _ ->
        {:noreply, state}
    end
  end

  defp do_info({:timeout, tref, {:lease_expired, ref}}, state) do
    case Leases.get(state.leases, ref) do
      %{timer: ^tref, worker_id: wid} ->
        # The caller is alive but still holds the worker well after its deadline (a callback that
        # blocks, say). The worker stopped the call at the deadline, so it is safe to take it back.
        Logger.warning("Krait reclaiming worker #{wid}: held past the call's deadline",
          worker_id: wid
        )

        {:noreply, release(state, ref)}

      _ ->
        {:noreply, state}
    end
  end

  defp do_info({:restart_slot, slot}, state) do
    case Workers.restart_due(state.table, slot) do
      :gone -> {:noreply, state}
      {gen, table} -> {:noreply, start_worker(%{state | table: table}, slot, gen)}
    end
  end

  defp do_info(:resolve_endpoints, state), do: {:noreply, resolve_endpoints(state)}

  # Recycling: a worker's RSS (each health tick), its age, a replacement's retry.
  defp do_info({:krait_worker_rss, pid, mb}, state) do
    case Workers.find_pid(state.table, pid) do
      {_mon, wid} ->
        state = %{state | table: Workers.put(state.table, wid, :rss_mb, mb)}
        {:noreply, check_recycle(state, wid)}

      nil ->
        {:noreply, state}
    end
  end

  defp do_info({:recycle_check, wid}, state) do
    state = check_recycle(state, wid)

    # not yet (the start-up measure changed since the timer was set): look again later
    case Recycle.recheck_in(Workers.get(state.table, wid), state.startup_ms, now()) do
      nil -> :ok
      ms -> Process.send_after(self(), {:recycle_check, wid}, ms)
    end

    {:noreply, state}
  end

  # its turn first (it had it; it may have lost it to another while it waited)
  defp do_info({:recycle_retry, wid}, state) do
    case Workers.recycle_first(state.table, wid) do
      {:ok, table} -> {:noreply, next_recycle(%{state | table: table})}
      :ignore -> {:noreply, state}
    end
  end

  defp do_info(:sweep_sessions, state) do
    cutoff = now() - state.config.session_ttl

    busy_sessions = Leases.sessions(state.leases)
    schedule_session_sweep(state.config)
    {:noreply, %{state | sessions: Sessions.sweep(state.sessions, cutoff, busy_sessions)}}
  end

  defp do_info(_msg, state), do: {:noreply, state}

  ## Queueing

  defp enqueue(state, req, queue) do
    case Queue.admit(state.queue, state.config.max_queue, req.deadline, now()) do
      {:error, reason} ->
        Process.demonitor(req.ref, [:flush])
        {:reply, {:error, reason}, state}

      :ok ->
        timer =
          if req.deadline != :infinity,
            do: :erlang.start_timer(req.deadline, self(), {:queue_timeout, req.ref}, abs: true)

        # A first call of its session: when the session gets bound while it waits, it follows.
        first? = req.session != nil and not Sessions.bound?(state.sessions, req.session)

        waiter = %Waiter{
          ref: req.ref,
          from: req.from,
          session: req.session,
          affinity: req.affinity,
          deadline: req.deadline,
          timer: timer,
          queue: queue,
          first: first?
        }

        {_waiter, q} = Queue.push(state.queue, waiter)
        {:noreply, %{state | queue: q}}
    end
  end

  defp insert_waiter(state, w), do: %{state | queue: Queue.insert(state.queue, w)}

  defp drop_waiter(state, ref) do
    case Queue.delete(state.queue, ref) do
      {nil, _} ->
        state

      {w, q} ->
        if w.timer, do: :erlang.cancel_timer(w.timer)
        %{state | queue: q}
    end
  end

  ## Serving: a worker became free (checkin, caller death, ready after start)

  defp serve(state, wid) do
    if Workers.room?(state.table, wid, state.config.calls_per_worker),
      do: serve_room(state, wid),
      else: state
  end

  defp serve_room(state, wid) do
    case Queue.take_next(state.queue, wid) do
      :empty ->
        case Workers.make_idle(state.table, wid) do
          {:added, table} -> offer(%{state | table: table}, wid)
          :already -> state
        end

      {%Waiter{queue: :any} = w, q} ->
        dispatch_general(%{state | queue: q}, w, wid)

      {w, q} ->
        hand_over(%{state | queue: q}, w, wid)
    end
  end

  # The oldest waiter of the general queue meets free worker `wid` (see Krait.Pool.Placement).
  defp dispatch_general(state, w, wid) do
    {dispatched, sessions} = Placement.dispatch(w, wid, state.sessions, state.table)
    state = %{state | sessions: sessions}

    case dispatched do
      :hand_over -> hand_over(state, w, wid)
      :reject -> state |> reject_waiter(w, :session_worker_unavailable) |> serve(wid)
      {:take, other} -> state |> unidle(other) |> hand_over(w, other) |> serve(wid)
      {:wait_for, other} -> state |> insert_waiter(%{w | queue: other}) |> serve(wid)
    end
  end

  defp unidle(state, wid), do: %{state | table: Workers.unidle(state.table, wid)}

  # `w` has left the queue already.
  defp hand_over(state, w, wid) do
    case take_idle(state, wid) do
      {:ok, cell, state} ->
        if w.timer, do: :erlang.cancel_timer(w.timer)
        {pid, _} = w.from
        GenServer.reply(w.from, {:ok, lease(state, w.ref, wid, cell, pid)})
        assign(state, w, wid)

      # a caller claimed it first: the waiter keeps its place
      {:taken, state} ->
        insert_waiter(state, w)
    end
  end

  # `w` may still be queued (it leaves the queue here) or have left it.
  defp reject_waiter(state, w, reason) do
    if w.timer, do: :erlang.cancel_timer(w.timer)
    Process.demonitor(w.ref, [:flush])
    GenServer.reply(w.from, {:error, reason})
    {_, q} = Queue.delete(state.queue, w.ref)
    %{state | queue: q}
  end

  ## Leases

  defp assign(state, req, wid) do
    timer =
      case req.deadline do
        :infinity ->
          nil

        deadline ->
          at = deadline + state.config.lease_grace
          :erlang.start_timer(at, self(), {:lease_expired, req.ref}, abs: true)
      end

    lease = %{
      worker_id: wid,
      session: req.session,
      timer: timer,
      mon: Map.get(req, :mon, req.ref)
    }

    # a worker with room for another call stays idle, at the back
    state = %{
      state
      | leases: Leases.put(state.leases, req.ref, lease),
        table: Workers.give(state.table, wid, req.ref, state.config.calls_per_worker)
    }

    state |> bind_session(req.session, wid) |> check_recycle(wid)
  end

  defp bind_session(state, nil, _wid), do: state

  defp bind_session(state, sid, wid),
    do: %{state | sessions: Sessions.touch(state.sessions, sid, wid, now())}

  # Lease `ref` ends, its timer and its caller's monitor with it: {the lease or nil, state}.
  defp end_lease(state, ref) do
    case Leases.delete(state.leases, ref) do
      {nil, _} ->
        {nil, state}

      {lease, leases} ->
        if lease.timer, do: :erlang.cancel_timer(lease.timer)
        Process.demonitor(lease.mon, [:flush])
        {lease, %{state | leases: leases}}
    end
  end

  # Lease `ref` ends and its worker takes the call back.
  defp release(state, ref) do
    case end_lease(state, ref) do
      {nil, state} -> state
      {lease, state} -> take_back(state, ref, lease)
    end
  end

  defp take_back(state, ref, lease) do
    case Workers.take_back(state.table, lease.worker_id, ref, state.config.calls_per_worker) do
      {:ok, w, table} -> released(%{state | table: table}, lease.worker_id, w)
      :unknown -> state
    end
  end

  defp released(state, wid, %{status: :retiring, leases: []}), do: retire(state, wid)
  defp released(state, _wid, %{status: :retiring}), do: state
  defp released(state, wid, _w), do: serve(state, wid)

  ## The fast path's cells (Krait.Pool.Cells), and the cluster's idle signal

  # After each message: the number of waiters for the callers' own claims and give-backs (only
  # when it changed), and, in a cluster pool, whether this node advertises idle workers (joins or
  # leaves the :pg group when `idle` becomes non-empty or empty, see Krait.Pool.Cluster).
  defp published({:reply, reply, state}), do: {:reply, reply, publish(state)}
  defp published({:noreply, state}), do: {:noreply, publish(state)}

  defp publish(state) do
    waiting = Queue.size(state.queue)

    state =
      if state.cells != nil and waiting != state.waiting do
        Cells.set_waiting(state.cells, waiting)
        %{state | waiting: waiting}
      else
        state
      end

    idle? = state.table.idle != []
    overflow? = Placement.overflow?(state.config.cluster, state.table, state.failing)

    state =
      if state.cells != nil and overflow? != state.overflow do
        Cells.set_overflow(state.cells, overflow?)
        %{state | overflow: overflow?}
      else
        state
      end

    if state.config.cluster and idle? != state.advertised do
      Krait.Pool.Cluster.advertise_idle(state.name, idle?)
      %{state | advertised: idle?}
    else
      state
    end
  end

  # One cell per worker that can be up at once: each slot's worker and its replacement; a remote
  # pool's endpoints come and go, so it has room for more. A worker without a free cell is simply
  # not offered (its calls go through the scheduler).
  defp init_cells(%{config: %{calls_per_worker: 1, name: name} = config} = state)
       when is_atom(name) do
    size = if config.endpoints, do: 64, else: 2 * config.size + 2
    %{state | cells: Cells.new(name, size), book: CellBook.new(size)}
  end

  defp init_cells(state), do: state

  # A worker is ready: it gets a cell (not offered yet; serve/2 offers it).
  defp publish_cell(%{cells: %Cells{} = cells} = state, wid) do
    case CellBook.assign(state.book, wid) do
      {:ok, {index, gen} = cell, book} ->
        w = Workers.get(state.table, wid)
        Cells.publish(cells, index, gen, {wid, w.pid, w.conn, w.channel})
        %{state | book: book, table: Workers.put(state.table, wid, :cell, cell)}

      :full ->
        state
    end
  end

  defp publish_cell(state, _wid), do: state

  # A worker goes out of callers' reach: gone (a claim made just before is dropped: its call fails
  # as the worker's death), or retiring or due for recycling (a claim made just before is adopted:
  # the worker serves it).
  defp withdraw_cell(state, wid, how) do
    case Workers.get(state.table, wid) do
      %{cell: {index, _gen}} ->
        state = %{
          state
          | table: Workers.put(state.table, wid, :cell, nil),
            book: CellBook.release(state.book, index)
        }

        case Cells.withdraw(state.cells, index) do
          {:claimed, claim, claimer} when how == :adopt ->
            start_claimed(state, wid, claim, claimer)

          _ ->
            state
        end

      _ ->
        state
    end
  end

  # The scheduler gives worker `wid` to a call it places: {:ok, the lease's cell or nil, state}, or
  # {:taken, state} when a caller claimed it first (that claim's lease starts now: the worker is
  # busy).
  defp take_idle(state, wid) do
    case Workers.get(state.table, wid) do
      %{cell: {index, gen}} ->
        case Cells.take(state.cells, index) do
          {:ok, counter} -> {:ok, {index, gen, counter}, state}
          {:claimed, claim} -> {:taken, adopt(state, wid, claim)}
        end

      _ ->
        {:ok, nil, state}
    end
  end

  defp adopt(state, wid, {index, gen, counter} = claim) do
    case Cells.take_claim(state.cells, index, gen, counter) do
      nil -> state
      claimer -> start_claimed(state, wid, claim, claimer)
    end
  end

  # A caller's claim becomes a lease as if the scheduler had handed the worker out. A caller already
  # dead gets its DOWN (:noproc) at once, and the worker comes back.
  defp start_claimed(state, wid, {index, gen, counter}, {pid, ref, deadline}) do
    Cells.claimed_to_leased(state.cells, index, gen, counter)

    mon = Process.monitor(pid)
    assign(state, %{ref: ref, mon: mon, session: nil, deadline: deadline}, wid)
  end

  # A worker joins `idle`: callers may claim it.
  defp offer(state, wid) do
    case Workers.get(state.table, wid) do
      %{cell: {index, _gen}, recycle: nil} -> Cells.offer(state.cells, index)
      _ -> :ok
    end

    state
  end

  # `cell`: the lease's cell (see Krait.Pool.Cells.give_back/2), for a caller on this node.
  defp lease(state, ref, wid, cell, caller) do
    cell = if node(caller) == node(), do: cell
    Lease.of(ref, self(), wid, Workers.get(state.table, wid), state.cells, cell)
  end

  ## Workers

  defp start_worker(state, slot, gen) do
    wid = "#{state.config.id_prefix}-#{slot}.#{gen}"

    case spawn_worker(state, slot, wid, nil) do
      {:ok, state} ->
        {:ok, table} = Workers.slot_started(state.table, slot, wid, gen, :ok)
        %{state | table: table}

      {:error, reason} ->
        {:failed, error, table} =
          Workers.slot_started(state.table, slot, wid, gen, {:error, reason})

        failed_start(%{state | table: table}, slot, error)
    end
  end

  # Starts worker `wid` in `slot` (a replacement for `successor_of`, or nil) and adds it, :starting.
  defp spawn_worker(state, slot, wid, successor_of) do
    config = state.config
    opts = Map.merge(config.worker, %{worker_id: wid, pool: self(), slot: slot})
    opts = if config.endpoints, do: Map.put(opts, :endpoint, state.endpoints[slot]), else: opts

    case DynamicSupervisor.start_child(config.worker_sup, {config.worker_module, opts}) do
      {:ok, pid} ->
        mon = Process.monitor(pid)

        {:ok,
         %{state | table: Workers.add(state.table, wid, mon, pid, slot, successor_of, now())}}

      {:error, reason} ->
        {:error, reason}
    end
  end

  ## Recycling (the policy: Krait.Pool.Recycle)

  defp schedule_age_check(state, wid) do
    case Recycle.age_timer(
           Workers.get(state.table, wid).age_limit,
           Recycle.lead(state.startup_ms)
         ) do
      nil -> :ok
      age -> Process.send_after(self(), {:recycle_check, wid}, age)
    end
  end

  # Is the worker due? Then its replacement starts (the worker goes on serving meanwhile), or, while
  # another replacement is starting, it waits its turn.
  defp check_recycle(%{config: %{recycle: nil}} = state, _wid), do: state

  defp check_recycle(state, wid) do
    with %{status: status, recycle: nil} = w when status in [:idle, :busy] <-
           Workers.get(state.table, wid),
         lead = Recycle.lead(state.startup_ms),
         reason when reason != nil <- Recycle.replace_now(state.config.recycle, w, now(), lead) do
      Events.recycling(
        state.name,
        wid,
        w,
        reason,
        Workers.replacement_starting(state.table),
        now()
      )

      state = %{state | table: Workers.due(state.table, wid, reason)}
      # passed over while another worker is idle: only the scheduler gives it out now
      state |> withdraw_cell(wid, :adopt) |> next_recycle()
    else
      _ -> state
    end
  end

  # Starts the replacement of the first worker due, unless one is starting already.
  defp next_recycle(state) do
    case Workers.next_recycle(state.table) do
      {:start, wid, table} -> start_successor(%{state | table: table}, wid)
      {:wait, table} -> %{state | table: table}
    end
  end

  defp start_successor(state, wid) do
    %{slot: slot} = Workers.get(state.table, wid)

    with {:start, successor, gen} <-
           Workers.successor_id(state.table, wid, state.config.id_prefix) do
      case spawn_worker(state, slot, successor, wid) do
        {:ok, state} ->
          %{state | table: Workers.successor_started(state.table, slot, successor, gen, :ok)}

        {:error, reason} ->
          Logger.error("Krait could not start #{successor}, replacing #{wid}: #{inspect(reason)}")
          table = Workers.successor_started(state.table, slot, successor, gen, {:error, reason})
          retry_successor(%{state | table: table}, wid)
      end
    else
      :busy -> state
    end
  end

  # The replacement failed to start: the worker it was to replace goes on serving, and another
  # replacement is tried after a backoff.
  defp retry_successor(state, wid) do
    {failures, table} = Workers.successor_failed(state.table, wid)
    delay = Recycle.retry_delay(failures, state.config.backoff_min, state.config.backoff_max)
    Process.send_after(self(), {:recycle_retry, wid}, delay)
    %{state | table: table}
  end

  # The replacement is ready: it is the slot's worker now; the worker it replaces takes no new call,
  # forgets its sessions, gives its waiters back to the general queue, and stops once it is free.
  defp hand_over_slot(state, successor) do
    {old, table} = Workers.successor_ready(state.table, successor)
    # (normally withdrawn already, when it became due)
    state = withdraw_cell(%{state | table: table}, old, :adopt)

    case Workers.retiring(state.table, old) do
      {:ok, w, table} ->
        sessions = Sessions.forget_worker(state.sessions, old)
        state = requeue_for_any(%{state | table: table, sessions: sessions}, old)
        if w.leases == [], do: retire(state, old), else: state

      :gone ->
        state
    end
  end

  # Callers waiting for a retiring worker (their session was bound to it) wait for any worker now,
  # in their place: their session starts afresh wherever they land.
  defp requeue_for_any(state, wid) do
    {waiters, q} = Queue.take_own(state.queue, wid)
    Enum.reduce(waiters, %{state | queue: q}, &insert_waiter(&2, %{&1 | queue: :any}))
  end

  defp retire(state, wid) do
    %{pid: pid, recycle: reason} = Workers.get(state.table, wid)
    GenServer.cast(pid, {:retire, reason})
    state
  end

  # A retiring worker has stopped: it leaves; its slot has its replacement already.
  defp retired(state, wid, w) do
    Events.recycled(state.name, wid, w, now())
    update_in(state.recycled[w.recycle], &(&1 + 1))
  end

  # A caller saw the worker's process or connection die during its call: the worker leaves the pool
  # now (and is told to stop, so its OS process goes too) rather than when its own DOWN arrives.
  defp lost(state, wid) do
    case Workers.find_id(state.table, wid) do
      {mon, ^wid} -> drop_worker(state, mon, wid, :connection_lost)
      nil -> state
    end
  end

  # The worker leaves the pool now, told to stop (its DOWN is not waited for).
  defp drop_worker(state, mon, wid, reason) do
    Process.demonitor(mon, [:flush])
    GenServer.cast(Workers.get(state.table, wid).pid, :lost)
    worker_down(state, mon, reason, [])
  end

  # What the worker's death means for its slot is Krait.Pool.Workers.down/6's; here its leases end,
  # its waiters move, and the slot's restart, replacement retry or retirement is carried out.
  defp worker_down(state, mon, reason, output) do
    state = withdraw_cell(state, state.table.mons[mon], :drop)
    {wid, w, effect, table} = Workers.down(state.table, mon, reason, output, now(), @stable_after)
    state = %{state | table: table}
    Events.down(state.name, wid, w, reason, output)

    state =
      cond do
        w.status == :retiring -> drop_leases(state, w)
        w.successor_of != nil -> state
        true -> state |> drop_leases(w) |> requeue_own_waiters(wid)
      end

    case effect do
      :retired -> retired(state, wid, w)
      {:retry_successor, old} -> retry_successor(state, old)
      {:failed, error} -> failed_start(state, w.slot, error)
      :restart -> schedule_restart(state, w.slot)
      _handed_or_gone -> state
    end
  end

  # The callers holding a worker that went get a transport error from its connection; their
  # checkins will be ignored.
  defp drop_leases(state, w),
    do: Enum.reduce(w.leases, state, fn ref, acc -> acc |> end_lease(ref) |> elem(1) end)

  # A start failed: the pool may now be failing, the slot restarts after its backoff, and the
  # failure is one log line.
  defp failed_start(state, slot, error) do
    was_failing? = state.failing != nil
    state = state |> check_failing(error) |> schedule_restart(slot)
    {now, now_failing?} = {now(), not was_failing? and state.failing != nil}

    case Events.start_failed(state.table.slots[slot], error, now_failing?, now) do
      :error -> %{state | table: Workers.logged(state.table, slot, now)}
      :debug -> state
    end
  end

  # The pool is failing when no worker is up and every slot's last start failed: nothing will serve
  # the queue soon, so waiting callers (and new ones, see place/2) get the start error now.
  defp check_failing(state, error) do
    if Workers.failing?(state.table) do
      error = with_endpoint_errors(state, error)

      fail_waiters(%{state | failing: error})
    else
      state
    end
  end

  # Waiting and awaiting callers get the pool's failure now.
  defp fail_waiters(%{failing: error} = state) do
    reply = {:error, {:workers_failing, error}}
    Enum.each(state.awaiting, &GenServer.reply(&1, reply))
    state = %{state | awaiting: []}

    Enum.reduce(
      Queue.waiters(state.queue),
      state,
      &reject_waiter(&2, &1, {:workers_failing, error})
    )
  end

  # A remote pool's failure names every endpoint's last error.
  defp with_endpoint_errors(%{config: %{endpoints: nil}}, error), do: error

  defp with_endpoint_errors(state, error) do
    last =
      Map.new(state.table.slots, fn {slot, s} -> {slot, s.last_error && s.last_error.reason} end)

    Endpoints.with_errors(error, state.endpoints, last, state.dns_errors)
  end

  ## A remote pool's endpoints: a slot per endpoint, DNS names re-resolved

  defp resolve_endpoints(state) do
    config = state.config
    {found, dns_errors} = Endpoints.resolve(config.endpoints)
    {gone, added} = Endpoints.diff(state.endpoints, found)

    state =
      Enum.reduce(gone, %{state | dns_errors: dns_errors}, fn {slot, e}, acc ->
        retire_slot(acc, slot, e)
      end)

    state =
      Enum.reduce(added, state, fn {slot, e}, acc ->
        if acc.endpoints != %{},
          do: Logger.info("Krait pool #{inspect(acc.name)}: new endpoint #{e.label}")

        start_worker(%{acc | endpoints: Map.put(acc.endpoints, slot, e)}, slot, 0)
      end)

    if Endpoints.dns?(config.endpoints),
      do: Process.send_after(self(), :resolve_endpoints, config.dns_interval)

    if found == [] do
      error = with_endpoint_errors(state, Endpoints.no_endpoints(dns_errors))
      fail_waiters(%{state | failing: error})
    else
      state
    end
  end

  defp retire_slot(state, slot, endpoint) do
    Logger.info(
      "Krait pool #{inspect(state.name)}: endpoint #{endpoint.label} is gone; its worker leaves"
    )

    {s, table} = Workers.drop_slot(state.table, slot)
    if s.timer, do: Process.cancel_timer(s.timer)
    state = %{state | table: table, endpoints: Map.delete(state.endpoints, slot)}

    case Workers.find_slot(state.table, slot) do
      {mon, wid} -> drop_worker(state, mon, wid, :endpoint_gone)
      nil -> state
    end
  end

  # Waiters that needed the dead worker: strict ones fail, hint ones go back to the general queue
  # (same arrival number, so they keep their place) and may be served by an idle worker right away.
  defp requeue_own_waiters(state, wid) do
    {waiters, q} = Queue.take_own(state.queue, wid)

    state =
      Enum.reduce(waiters, %{state | queue: q}, fn w, acc ->
        if w.affinity == :hint,
          do: insert_waiter(acc, %{w | queue: :any}),
          else: reject_waiter(acc, w, :session_worker_unavailable)
      end)

    # Offer the requeued waiters to the idle workers (serve/2 puts each back in `idle` if unused).
    {idle, table} = Workers.take_all_idle(state.table)

    Enum.reduce(idle, %{state | table: table}, fn idle_wid, acc ->
      case Workers.get(acc.table, idle_wid) do
        %{status: :idle} -> serve(acc, idle_wid)
        _ -> acc
      end
    end)
  end

  defp schedule_restart(state, slot) do
    delay =
      Workers.restart_delay(state.table, slot, state.config.backoff_min, state.config.backoff_max)

    timer = Process.send_after(self(), {:restart_slot, slot}, delay)
    %{state | table: Workers.restart_scheduled(state.table, slot, timer, delay)}
  end

  ## Stats and readiness

  defp notify_awaiting(%{awaiting: []} = state), do: state

  defp notify_awaiting(state) do
    if State.ready?(state) do
      Enum.each(state.awaiting, &GenServer.reply(&1, :ok))
      %{state | awaiting: []}
    else
      state
    end
  end

  defp schedule_session_sweep(%{session_ttl: :infinity}), do: :ok

  defp schedule_session_sweep(%{session_ttl: ttl}),
    do: Process.send_after(self(), :sweep_sessions, min(ttl, 60_000))

  defp now, do: System.monotonic_time(:millisecond)
end
