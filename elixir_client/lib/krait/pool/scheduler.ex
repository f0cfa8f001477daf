defmodule Krait.Pool.Scheduler do
  @moduledoc """
  The pool's brain: hands workers out to callers and takes them back. It never runs a call itself;
  the caller talks to the worker's gRPC connection directly (see `Krait.Call`).

  Its data and rules live in pure modules it only wires to timers, monitors and messages: the wait
  queue (`Krait.Pool.Queue`), the worker table's rules (`Krait.Pool.Slots`), the session table
  (`Krait.Pool.Sessions`). A call without a session usually never reaches it before it runs: the
  caller claims an idle worker itself and gives it back itself when nobody waits
  (`Krait.Pool.Cells`), and the scheduler takes the lease on from the caller's cast.

  What it keeps:

    * the workers, one per slot, each `:starting`, `:idle` (room for another call) or `:busy`
      (holding `calls_per_worker` leases); a dead worker's slot is restarted with exponential
      backoff. A remote pool has a slot per endpoint, re-resolved for `dns://` names
      (`Krait.Pool.Endpoints`): new addresses get a slot, gone ones lose theirs;
    * leases: which caller holds which worker. Every caller is monitored, so a worker comes back when
      its caller checks it in, dies, or holds it `lease_grace` past the call's deadline;
    * the waiting queue: callers wait in FIFO order in a `:gb_trees` keyed by arrival number (insert,
      remove and take-oldest are O(log n)), either for any worker or, when session affinity requires
      it, for one particular worker. Each waiter has a timer at its deadline;
    * session bindings: `session_id => worker_id`, made when a session's first call is given a
      worker. Calls that were already waiting when the binding was made (concurrent first calls)
      follow it to that worker, so they never land on different workers; calls made after it follow
      their affinity (`:hint` takes any free worker while the session's worker is busy);
    * the workers' health as callers see it: a caller whose call failed because its worker's
      process or connection died checks the lease in as `:lost`, and the worker leaves the pool at
      once (a worker also reports its own death before cleaning up), so no call is handed to a dead
      worker;
    * start failures: when every slot's last start failed and no worker is up, the pool is
      *failing*: waiting and new callers get `{:workers_failing, last_error}` at once (with the
      worker's last output, e.g. the adapter's import error) while restarts go on with backoff;
      the first worker that comes up ends it;
    * recycling (`recycle:`, the policy in `Krait.Pool.Recycle`): a worker due for it gets a
      replacement started in its slot while it goes on serving; once the replacement is ready, the
      old worker is `:retiring` (no new calls; its session bindings dropped, so their next calls
      start afresh elsewhere; callers waiting for it go back to the general queue), and it is told
      to stop once its last lease comes back. The slot keeps one ready worker throughout. One
      replacement starts at a time: workers due meanwhile wait their turn in `recycle_queue`,
      serving on;
    * with `cluster: true`, its place in the cluster (`Krait.Pool.Cluster`): callers of this node
      are sent to other nodes' idle workers and to the nodes that hold their sessions.
  """

  use GenServer
  require Logger

  alias Krait.Pool.{Cells, Endpoints, Lease, Queue, Recycle, Sessions, Slots}
  alias Krait.Pool.Queue.Waiter

  @type affinity :: :hint | :strict_queue | :strict_fail_fast
  @type deadline :: integer() | :infinity
  @type checkout_error ::
          :worker_busy
          | :session_worker_unavailable
          | :pool_saturated
          | :queue_timeout
          | :pool_not_running
          | {:workers_failing, map()}

  # A checkout's GenServer.call outlives the caller's deadline by this margin, so the pool's own reply
  # (:queue_timeout) normally wins.
  @call_margin 5_000
  # A worker that stayed up this long has its restart backoff reset.
  @stable_after 10_000

  ## Client API

  @doc "Starts the scheduler of a pool, registered under the pool's name (see `Krait.Pool`)."
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(config) do
    GenServer.start_link(__MODULE__, config, name: config.name)
  end

  @doc """
  Checks a worker out for a call. `deadline` is an absolute `System.monotonic_time(:millisecond)` or
  `:infinity`; waiting in the queue stops there with `{:error, :queue_timeout}`.
  """
  @spec checkout(GenServer.server(), String.t() | nil, affinity(), deadline()) ::
          {:ok, Lease.t()} | {:error, checkout_error()}
  def checkout(pool, session_id, affinity, deadline) do
    # A call without a session takes an idle worker itself when one is offered (Krait.Pool.Cells):
    # no round trip; the scheduler hears of it by a cast.
    case session_id == nil and claim_idle(pool, deadline) do
      {:ok, lease} -> {:ok, lease}
      _ -> checkout_call(pool, session_id, affinity, deadline)
    end
  end

  defp claim_idle(pool, deadline) do
    with %Cells{} = cells <- Cells.lookup(pool) do
      ref = make_ref()

      case Cells.claim(cells, ref, deadline) do
        {:ok, {index, gen, counter}, {wid, pid, conn, channel}} ->
          GenServer.cast(cells.pid, {:claimed, index, gen, counter})

          {:ok,
           %Lease{
             ref: ref,
             pool: cells.pid,
             worker_id: wid,
             worker_pid: pid,
             conn: conn,
             channel: channel,
             cells: cells,
             cell: {index, gen, counter}
           }}

        {:withdrawn, _claim} ->
          GenServer.cast(cells.pid, {:checkin, ref, :ok})
          :none

        :none ->
          :none
      end
    end
  end

  defp checkout_call(pool, session_id, affinity, deadline) do
    timeout =
      case deadline do
        :infinity -> :infinity
        d -> max(d - now(), 0) + @call_margin
      end

    # A cluster pool answers :no_idle_here instead of queueing a call it could send elsewhere: the
    # caller (never the scheduler, which must not block on another) asks the other nodes' pools for
    # an idle worker, and queues here only when none has one.
    checkout(pool, session_id, affinity, deadline, timeout, :try)
  catch
    :exit, {:timeout, _} -> {:error, :queue_timeout}
    :exit, _ -> {:error, :pool_not_running}
  end

  defp checkout(pool, session_id, affinity, deadline, timeout, mode) do
    alias Krait.Pool.Cluster

    case GenServer.call(pool, {:checkout, session_id, affinity, deadline, mode}, timeout) do
      # a session this node has not bound: another node may have it
      {:error, {:ask_cluster, group}} ->
        Cluster.checkout_bound(group, session_id, affinity, deadline, timeout)
        |> remember_remote(pool, session_id) ||
          checkout(pool, session_id, affinity, deadline, timeout, :first)

      {:error, {:no_idle_here, group}} ->
        Cluster.checkout_elsewhere(group, session_id, affinity, deadline)
        |> remember_remote(pool, session_id) ||
          GenServer.call(pool, {:checkout, session_id, affinity, deadline, :queue}, timeout)

      reply ->
        reply
    end
  end

  # The caller's own pool notes which node serves a session bound elsewhere, so that the session's
  # calls fail as their worker's death when that node goes down.
  defp remember_remote({:ok, %Lease{pool: remote}} = reply, pool, session) when session != nil do
    GenServer.cast(pool, {:remote_session, session, node(remote)})
    reply
  end

  defp remember_remote(reply, _pool, _session), do: reply

  @doc """
  Returns a leased worker to the pool. `:lost` says the call failed because the worker's process or
  connection died: the worker leaves the pool at once instead of becoming idle. Unknown or already
  returned leases are ignored.
  """
  @spec checkin(Lease.t(), :ok | :lost) :: :ok
  def checkin(%Lease{pool: pool, ref: ref} = lease, outcome \\ :ok) do
    # nobody waiting: the worker is free for the next caller now, not once the scheduler reads this
    if outcome == :ok and lease.cell != nil, do: Cells.give_back(lease.cells, lease.cell)
    GenServer.cast(pool, {:checkin, ref, outcome})
  end

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

    state = %{
      config: config,
      name: config.name,
      # slot => %{worker_id, gen, failures, restarts, timer, start_failed, last_error, successor,
      #           recycles, recycle_failures}
      slots: %{},
      # worker_id => %{pid, slot, status, conn, os_pid, leases, calls, given, ready_at, recycle,
      # successor_of, rss_mb}; a worker is :busy when it holds `calls_per_worker` leases, and in
      # `idle` while it has room for another; :retiring once replaced (see Krait.Pool.Recycle)
      workers: %{},
      # monitor ref of a worker process => worker_id
      worker_mons: %{},
      # idle worker ids, longest idle first
      idle: [],
      # caller monitor ref => %{worker_id, session, timer}
      leases: %{},
      # the fast path's cells (Krait.Pool.Cells; nil when calls_per_worker > 1 or the pool has no
      # name), the free cell indices, the worker in each cell, and the publications so far
      cells: nil,
      free_cells: [],
      cell_of: %{},
      cell_gen: 0,
      # the waiters published in the cells, and whether this node advertises idle workers
      waiting: 0,
      advertised: false,
      # a claimed lease's caller monitor => its lease ref (a scheduler-made lease's ref is its monitor)
      mons: %{},
      # the callers waiting for a worker (Krait.Pool.Queue)
      queue: Queue.new(),
      # session bindings, and a cluster pool's sessions bound on other nodes (Krait.Pool.Sessions)
      sessions: Sessions.new(),
      awaiting: [],
      # nil, or the last start failure while every slot is failing to start
      failing: nil,
      # a remote pool's slot => its endpoint (see Krait.Pool.Endpoints), and the DNS errors
      endpoints: %{},
      dns_errors: [],
      # workers recycled so far, by reason
      recycled: Map.new(Recycle.reasons(), &{&1, 0}),
      # workers due for recycling that wait for the replacement now starting (one at a time), in order
      recycle_queue: [],
      # the last worker's start, spawn to ready (ms): how early a replacement starts
      startup_ms: 1_000
    }

    state = init_cells(state)

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

  # A cluster pool's modes (see Krait.Pool.Cluster): :try and :first are the caller's own node, which
  # sends a session it has not bound to the other nodes first, and a call it cannot place at once to
  # their idle workers; :if_bound and :idle_only are another node's caller; :queue places or waits.
  defp do_call({:checkout, session, affinity, _deadline, :try}, _from, state)
       when state.config.cluster and session != nil and
              not is_map_key(state.sessions.bound, session) do
    # bound on a node that is gone: the session's worker died with it
    case Sessions.remote_node(state.sessions, session) do
      node when node != nil and affinity != :hint ->
        if node in Node.list(),
          do: {:reply, {:error, {:ask_cluster, state.name}}, state},
          else: {:reply, {:error, :session_worker_unavailable}, state}

      _ ->
        {:reply, {:error, {:ask_cluster, state.name}}, state}
    end
  end

  defp do_call({:checkout, session, _affinity, _deadline, :if_bound}, _from, state)
       when not is_map_key(state.sessions.bound, session),
       do: {:reply, {:error, :not_bound}, state}

  defp do_call({:checkout, session, affinity, deadline, mode}, {pid, _} = from, state) do
    ref = Process.monitor(pid)
    req = %{ref: ref, from: from, session: session, affinity: affinity, deadline: deadline}

    case place(req, state) do
      {:assign, wid, state} ->
        case take_idle(state, wid) do
          {:ok, cell, state} ->
            {:reply, {:ok, lease(state, ref, wid, cell, pid)}, assign(state, req, wid)}

          # a caller claimed it first: place the call again
          {:taken, state} ->
            Process.demonitor(ref, [:flush])
            do_call({:checkout, session, affinity, deadline, mode}, from, state)
        end

      # another node's caller asking for an idle worker: no queueing here
      {:enqueue, _queue, state} when mode == :idle_only ->
        Process.demonitor(ref, [:flush])
        {:reply, {:error, :no_idle}, state}

      {:enqueue, :any, state} when mode in [:try, :first] and state.config.cluster ->
        Process.demonitor(ref, [:flush])
        {:reply, {:error, {:no_idle_here, state.name}}, state}

      # a :strict_fail_fast first call finds every worker here busy: the caller asks the other nodes
      # for an idle one, as for a call that would queue; busy everywhere, it fails fast
      {:error, :all_busy, state} ->
        Process.demonitor(ref, [:flush])

        cond do
          mode == :idle_only ->
            {:reply, {:error, :no_idle}, state}

          mode in [:try, :first] and state.config.cluster ->
            {:reply, {:error, {:no_idle_here, state.name}}, state}

          true ->
            {:reply, {:error, :worker_busy}, state}
        end

      {:enqueue, queue, state} ->
        enqueue(state, req, queue)

      {:error, reason, state} ->
        Process.demonitor(ref, [:flush])
        {:reply, {:error, reason}, state}
    end
  end

  defp do_call({:forget_session, session_id}, _from, state) do
    {:reply, :ok, %{state | sessions: Sessions.forget(state.sessions, session_id)}}
  end

  defp do_call(:stats, _from, state), do: {:reply, build_stats(state), state}

  defp do_call(:await_ready, from, state) do
    cond do
      ready_count(state) >= slot_count(state) -> {:reply, :ok, state}
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
         wid when wid != nil <- state.cell_of[index],
         %{cell: {^index, ^gen}} <- state.workers[wid] do
      {:noreply, start_claimed(state, wid, {index, gen, counter}, {pid, ref, deadline})}
    else
      _ -> {:noreply, state}
    end
  end

  defp do_cast({:checkin, ref, outcome}, state) do
    case Map.fetch(state.leases, ref) do
      {:ok, lease} when outcome == :lost ->
        state = forget_mon(state, lease)
        {:noreply, lost(state, lease.worker_id)}

      {:ok, lease} ->
        state = forget_mon(state, lease)
        {:noreply, release(state, ref, lease)}

      :error ->
        {:noreply, state}
    end
  end

  defp do_info({:krait_worker_ready, pid, info}, state) do
    case state.workers[info.worker_id] do
      %{pid: ^pid, status: :starting} = w ->
        Logger.info("Krait worker #{info.worker_id} ready (os pid #{info.os_pid})",
          worker_id: info.worker_id
        )

        Krait.Telemetry.worker_up(state.name, info.worker_id, info.os_pid)

        w = %{
          w
          | status: :idle,
            conn: info.conn,
            channel: Map.get(info, :channel, Krait.GRPC.Connection),
            grpc_port: Map.get(info, :grpc_port),
            http_port: Map.get(info, :http_port),
            os_pid: info.os_pid,
            ready_at: now(),
            age_limit: Recycle.age_limit(state.config.recycle)
        }

        state = put_in(state.workers[info.worker_id], w)
        state = update_in(state.slots[w.slot], &%{&1 | start_failed: false})
        state = %{state | failing: nil}
        state = %{state | startup_ms: now() - w.spawned_at}
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

        state = notify_awaiting(state)
        {:noreply, state}

      _ ->
        {:noreply, state}
    end
  end

  # A worker reports its death before cleaning up (stopping its OS process can take the shutdown
  # grace): it leaves the pool now, not when its DOWN arrives.
  defp do_info({:krait_worker_down, pid, reason, output}, state) do
    case Enum.find(state.worker_mons, fn {_mon, wid} -> state.workers[wid].pid == pid end) do
      {mon, _wid} ->
        Process.demonitor(mon, [:flush])
        {:noreply, worker_down(state, mon, reason, output)}

      nil ->
        {:noreply, state}
    end
  end

  defp do_info({:DOWN, mon, :process, _pid, reason}, state) do
    # a claimed lease's caller: its monitor is not its lease ref
    {ref, state} =
      case Map.pop(state.mons, mon) do
        {nil, _} -> {mon, state}
        {ref, mons} -> {ref, %{state | mons: mons}}
      end

    cond do
      Map.has_key?(state.worker_mons, ref) ->
        {:noreply, worker_down(state, ref, reason, [])}

      Map.has_key?(state.leases, ref) ->
        # The caller died holding a worker: its gRPC stream is cancelled by the connection (which
        # monitors the stream's owner); the worker is free again right now.
        lease = state.leases[ref]

        Logger.debug("Krait caller died during a call; worker #{lease.worker_id} returned",
          worker_id: lease.worker_id
        )

        {:noreply, release(state, ref, lease)}

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
    case state.leases[ref] do
      %{timer: ^tref, worker_id: wid} = lease ->
        # The caller is alive but still holds the worker well after its deadline (a callback that
        # blocks, say). The worker stopped the call at the deadline, so it is safe to take it back.
        Logger.warning("Krait reclaiming worker #{wid}: held past the call's deadline",
          worker_id: wid
        )

        state = forget_mon(state, lease)
        {:noreply, release(state, ref, lease)}

      _ ->
        {:noreply, state}
    end
  end

  defp do_info({:restart_slot, slot}, state) do
    case state.slots[slot] do
      nil ->
        {:noreply, state}

      s ->
        state = put_in(state.slots[slot], %{s | timer: nil})
        {:noreply, start_worker(state, slot, s.gen + 1)}
    end
  end

  defp do_info(:resolve_endpoints, state), do: {:noreply, resolve_endpoints(state)}

  # Recycling: a worker's RSS (each health tick), its age, a replacement's retry.
  defp do_info({:krait_worker_rss, pid, mb}, state) do
    case Enum.find(state.workers, fn {_wid, w} -> w.pid == pid end) do
      {wid, _w} ->
        state = put_in(state.workers[wid].rss_mb, mb)
        {:noreply, check_recycle(state, wid)}

      nil ->
        {:noreply, state}
    end
  end

  defp do_info({:recycle_check, wid}, state) do
    state = check_recycle(state, wid)

    # not yet (the start-up measure changed since the timer was set): look again later
    case state.workers[wid] do
      %{recycle: nil, status: status, ready_at: ready_at, age_limit: age_limit}
      when status in [:idle, :busy] and age_limit != nil ->
        lead = Recycle.lead(state.startup_ms)
        left = Recycle.age_timer(age_limit, lead) - (now() - ready_at)
        Process.send_after(self(), {:recycle_check, wid}, max(left, 10))

      _ ->
        :ok
    end

    {:noreply, state}
  end

  # its turn first (it had it; it may have lost it to another while it waited)
  defp do_info({:recycle_retry, wid}, state) do
    case state.workers[wid] do
      %{recycle: reason, status: status} when reason != nil and status in [:idle, :busy] ->
        queue = [wid | List.delete(state.recycle_queue, wid)]
        {:noreply, next_recycle(%{state | recycle_queue: queue})}

      _ ->
        {:noreply, state}
    end
  end

  defp do_info(:sweep_sessions, state) do
    cutoff = now() - state.config.session_ttl

    busy_sessions = MapSet.new(state.leases, fn {_ref, lease} -> lease.session end)
    schedule_session_sweep(state.config)
    {:noreply, %{state | sessions: Sessions.sweep(state.sessions, cutoff, busy_sessions)}}
  end

  defp do_info(_msg, state), do: {:noreply, state}

  ## Placement: where a new checkout goes

  defp place(%{session: nil} = _req, state) do
    case pick_idle(state) do
      nil -> unavailable_or_enqueue(state)
      wid -> {:assign, wid, state}
    end
  end

  defp place(%{session: sid, affinity: affinity} = req, state) do
    case Sessions.worker(state.sessions, sid) do
      nil ->
        first_call(req, state)

      wid ->
        case state.workers[wid] do
          nil when affinity == :hint ->
            first_call(req, %{state | sessions: Sessions.forget(state.sessions, sid)})

          nil ->
            {:error, :session_worker_unavailable, state}

          # recycled: the session ended with it (its binding is normally dropped already)
          %{status: :retiring} ->
            first_call(req, %{state | sessions: Sessions.forget(state.sessions, sid)})

          %{status: :idle} ->
            {:assign, wid, state}

          %{status: :busy} ->
            cond do
              affinity == :strict_fail_fast -> {:error, :worker_busy, state}
              affinity == :strict_queue -> {:enqueue, wid, state}
              state.idle != [] -> {:assign, pick_idle(state), state}
              true -> {:enqueue, :any, state}
            end
        end
    end
  end

  defp first_call(req, state) do
    case pick_idle(state) do
      # every worker of this node is busy: in a cluster another node's may not be (see handle_call)
      nil when req.affinity == :strict_fail_fast and state.failing == nil ->
        {:error, :all_busy, state}

      nil ->
        unavailable_or_enqueue(state)

      wid ->
        {:assign, wid, state}
    end
  end

  # The idle worker a new call takes (see Krait.Pool.Slots.pick_idle/2).
  defp pick_idle(state), do: Slots.pick_idle(state.idle, state.workers)

  defp unavailable_or_enqueue(%{failing: nil} = state), do: {:enqueue, :any, state}
  defp unavailable_or_enqueue(state), do: {:error, {:workers_failing, state.failing}, state}

  ## Queueing

  defp enqueue(state, req, queue) do
    remaining = if req.deadline == :infinity, do: :infinity, else: req.deadline - now()

    cond do
      Queue.size(state.queue) >= state.config.max_queue ->
        Process.demonitor(req.ref, [:flush])
        {:reply, {:error, :pool_saturated}, state}

      remaining != :infinity and remaining <= 0 ->
        Process.demonitor(req.ref, [:flush])
        {:reply, {:error, :queue_timeout}, state}

      true ->
        timer =
          if remaining != :infinity,
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
    if room?(state, wid), do: serve_room(state, wid), else: state
  end

  defp room?(state, wid), do: Slots.room?(state.workers[wid], state.config.calls_per_worker)

  defp serve_room(state, wid) do
    case Queue.take_next(state.queue, wid) do
      :empty ->
        if wid in state.idle, do: state, else: offer(%{state | idle: state.idle ++ [wid]}, wid)

      {%Waiter{queue: :any} = w, q} ->
        dispatch_general(%{state | queue: q}, w, wid)

      {w, q} ->
        hand_over(%{state | queue: q}, w, wid)
    end
  end

  # The oldest waiter of the general queue meets free worker `wid`; its session may have been bound
  # while it waited, in which case it may have to wait for that worker instead.
  defp dispatch_general(state, %{session: nil} = w, wid), do: hand_over(state, w, wid)

  defp dispatch_general(state, w, wid) do
    case Sessions.worker(state.sessions, w.session) do
      nil ->
        hand_over(state, w, wid)

      ^wid ->
        hand_over(state, w, wid)

      other ->
        case state.workers[other] do
          nil when w.affinity == :hint ->
            state = %{state | sessions: Sessions.forget(state.sessions, w.session)}
            hand_over(state, w, wid)

          %{status: :retiring} ->
            state = %{state | sessions: Sessions.forget(state.sessions, w.session)}
            hand_over(state, w, wid)

          nil ->
            state = reject_waiter(state, w, :session_worker_unavailable)
            serve(state, wid)

          %{status: :busy} when w.affinity == :hint and not w.first ->
            hand_over(state, w, wid)

          %{status: :idle} ->
            state = %{state | idle: List.delete(state.idle, other)}
            state |> hand_over(w, other) |> serve(wid)

          _ ->
            # Waits for its own worker now; keeps its place (seq) in that worker's queue.
            state = insert_waiter(state, %{w | queue: other})
            serve(state, wid)
        end
    end
  end

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

    state = %{
      state
      | idle: List.delete(state.idle, wid),
        leases:
          Map.put(state.leases, req.ref, %{
            worker_id: wid,
            session: req.session,
            timer: timer,
            mon: Map.get(req, :mon, req.ref)
          })
    }

    {w, full?} = Slots.give(state.workers[wid], req.ref, state.config.calls_per_worker)
    state = put_in(state.workers[wid], w)

    # a worker with room for another call stays idle, at the back
    state = if full?, do: state, else: %{state | idle: state.idle ++ [wid]}
    state |> bind_session(req.session, wid) |> check_recycle(wid)
  end

  defp bind_session(state, nil, _wid), do: state

  defp bind_session(state, sid, wid),
    do: %{state | sessions: Sessions.touch(state.sessions, sid, wid, now())}

  defp release(state, ref, lease) do
    if lease.timer, do: :erlang.cancel_timer(lease.timer)
    state = %{state | leases: Map.delete(state.leases, ref)}

    with %{} = w <- state.workers[lease.worker_id],
         {:ok, w} <- Slots.take_back(w, ref, state.config.calls_per_worker) do
      released(put_in(state.workers[lease.worker_id], w), lease.worker_id, w)
    else
      _ -> state
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

    idle? = state.idle != []

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
    %{state | cells: Cells.new(name, size), free_cells: Enum.to_list(1..size)}
  end

  defp init_cells(state), do: state

  # A worker is ready: it gets a cell (not offered yet; serve/2 offers it).
  defp publish_cell(%{cells: %Cells{} = cells, free_cells: [index | rest]} = state, wid) do
    w = state.workers[wid]
    gen = state.cell_gen + 1
    Cells.publish(cells, index, gen, {wid, w.pid, w.conn, w.channel})
    state = put_in(state.workers[wid].cell, {index, gen})
    %{state | free_cells: rest, cell_of: Map.put(state.cell_of, index, wid), cell_gen: gen}
  end

  defp publish_cell(state, _wid), do: state

  # A worker goes out of callers' reach: gone (a claim made just before is dropped: its call fails
  # as the worker's death), or retiring or due for recycling (a claim made just before is adopted:
  # the worker serves it).
  defp withdraw_cell(state, wid, how) do
    case state.workers[wid] do
      %{cell: {index, _gen}} ->
        state = put_in(state.workers[wid].cell, nil)

        state = %{
          state
          | free_cells: [index | state.free_cells],
            cell_of: Map.delete(state.cell_of, index)
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
    case state.workers[wid] do
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
    state = %{state | mons: Map.put(state.mons, mon, ref)}
    assign(state, %{ref: ref, mon: mon, session: nil, deadline: deadline}, wid)
  end

  # A worker joins `idle`: callers may claim it.
  defp offer(state, wid) do
    case state.workers[wid] do
      %{cell: {index, _gen}, recycle: nil} -> Cells.offer(state.cells, index)
      _ -> :ok
    end

    state
  end

  defp forget_mon(state, %{mon: mon}) do
    Process.demonitor(mon, [:flush])
    %{state | mons: Map.delete(state.mons, mon)}
  end

  # `cell`: the lease's cell (see Krait.Pool.Cells.give_back/2), for a caller on this node.
  defp lease(state, ref, wid, cell, caller) do
    w = state.workers[wid]
    cell = if cell != nil and node(caller) == node(), do: cell

    %Lease{
      ref: ref,
      pool: self(),
      worker_id: wid,
      worker_pid: w.pid,
      conn: w.conn,
      channel: w.channel,
      cells: if(cell, do: state.cells),
      cell: cell
    }
  end

  ## Workers

  @new_slot %{
    failures: 0,
    # when this slot last logged a failed start (see log_failed_start/4)
    logged_at: nil,
    # ms before the slot's next start (after a failed one)
    backoff: nil,
    restarts: 0,
    start_failed: false,
    last_error: nil,
    successor: nil,
    recycles: 0,
    recycle_failures: 0
  }

  defp start_worker(state, slot, gen) do
    config = state.config
    wid = "#{config.id_prefix}-#{slot}.#{gen}"
    prev = Map.get(state.slots, slot, @new_slot)
    slot_state = Map.merge(prev, %{worker_id: wid, gen: gen, timer: nil})

    case spawn_worker(state, slot, wid, nil) do
      {:ok, state} ->
        %{state | slots: Map.put(state.slots, slot, slot_state)}

      {:error, reason} ->
        error = %{worker_id: wid, reason: reason, output: ""}
        failures = slot_state.failures + 1
        slot_state = %{slot_state | start_failed: true, last_error: error, failures: failures}
        state = %{state | slots: Map.put(state.slots, slot, slot_state)}
        failed_start(state, slot, error)
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
          spawned_at: now(),
          ready_at: nil,
          recycle: nil,
          age_limit: nil,
          successor_of: successor_of,
          rss_mb: nil,
          # its fast-path cell {index, generation}, while callers may claim it
          cell: nil
        }

        {:ok,
         %{
           state
           | workers: Map.put(state.workers, wid, worker),
             worker_mons: Map.put(state.worker_mons, mon, wid)
         }}

      {:error, reason} ->
        {:error, reason}
    end
  end

  ## Recycling (the policy: Krait.Pool.Recycle)

  defp schedule_age_check(state, wid) do
    case Recycle.age_timer(state.workers[wid].age_limit, Recycle.lead(state.startup_ms)) do
      nil -> :ok
      age -> Process.send_after(self(), {:recycle_check, wid}, age)
    end
  end

  # Is the worker due? Then its replacement starts (the worker goes on serving meanwhile), or, while
  # another replacement is starting, it waits its turn.
  defp check_recycle(%{config: %{recycle: nil}} = state, _wid), do: state

  defp check_recycle(state, wid) do
    with %{status: status, recycle: nil} = w when status in [:idle, :busy] <- state.workers[wid],
         lead = Recycle.lead(state.startup_ms),
         reason when reason != nil <- Recycle.replace_now(state.config.recycle, w, now(), lead) do
      starting = replacement_starting(state)

      Logger.info(
        "Krait worker #{wid} is due for recycling (#{reason}; #{due_text(reason, w)}); " <>
          if(starting,
            do: "its replacement starts once #{starting}'s is ready",
            else: "starting its replacement"
          ),
        worker_id: wid
      )

      Krait.Telemetry.worker_recycling(state.name, wid, reason, w.given, w.rss_mb)
      state = put_in(state.workers[wid].recycle, reason)
      # passed over while another worker is idle: only the scheduler gives it out now
      state = withdraw_cell(state, wid, :adopt)
      next_recycle(%{state | recycle_queue: state.recycle_queue ++ [wid]})
    else
      _ -> state
    end
  end

  # The worker whose replacement is starting (nil when none is): at most one at a time.
  defp replacement_starting(state) do
    Enum.find_value(state.workers, fn {_wid, w} -> w.successor_of end)
  end

  # Starts the replacement of the first worker in the queue still waiting for one, unless a
  # replacement is starting already. Workers gone or replaced meanwhile leave the queue.
  defp next_recycle(%{recycle_queue: []} = state), do: state

  defp next_recycle(%{recycle_queue: [wid | rest]} = state) do
    cond do
      replacement_starting(state) != nil ->
        state

      match?(%{status: s, recycle: r} when s in [:idle, :busy] and r != nil, state.workers[wid]) ->
        start_successor(%{state | recycle_queue: rest}, wid)

      true ->
        next_recycle(%{state | recycle_queue: rest})
    end
  end

  defp due_text(:calls, w), do: "#{w.given} calls given"
  defp due_text(:age, w), do: "up #{now() - w.ready_at} ms"
  defp due_text(:rss_mb, w), do: "#{Float.round(w.rss_mb * 1.0, 1)} MiB resident"

  defp start_successor(state, wid) do
    %{slot: slot} = state.workers[wid]
    s = state.slots[slot]

    if s.successor != nil do
      state
    else
      gen = s.gen + 1
      successor = "#{state.config.id_prefix}-#{slot}.#{gen}"

      case spawn_worker(state, slot, successor, wid) do
        {:ok, state} ->
          put_in(state.slots[slot], %{s | gen: gen, successor: successor})

        {:error, reason} ->
          Logger.error("Krait could not start #{successor}, replacing #{wid}: #{inspect(reason)}")
          error = %{worker_id: successor, reason: reason, output: ""}
          state = put_in(state.slots[slot], %{s | gen: gen, last_error: error})
          retry_successor(state, wid)
      end
    end
  end

  # The replacement failed to start: the worker it was to replace goes on serving, and another
  # replacement is tried after a backoff.
  defp retry_successor(state, wid) do
    slot = state.workers[wid].slot
    s = state.slots[slot]
    failures = s.recycle_failures + 1
    delay = Recycle.retry_delay(failures, state.config.backoff_min, state.config.backoff_max)
    Process.send_after(self(), {:recycle_retry, wid}, delay)
    put_in(state.slots[slot], %{s | recycle_failures: failures, successor: nil})
  end

  # The replacement is ready: it is the slot's worker now; the worker it replaces takes no new call,
  # forgets its sessions, gives its waiters back to the general queue, and stops once it is free.
  defp hand_over_slot(state, successor) do
    %{successor_of: old, slot: slot} = state.workers[successor]
    state = put_in(state.workers[successor].successor_of, nil)

    state =
      update_in(
        state.slots[slot],
        &%{
          &1
          | worker_id: successor,
            successor: nil,
            recycle_failures: 0,
            recycles: &1.recycles + 1
        }
      )

    # (normally withdrawn already, when it became due)
    state = withdraw_cell(state, old, :adopt)

    case state.workers[old] do
      %{status: status} = w when status in [:idle, :busy] ->
        sessions = Sessions.forget_worker(state.sessions, old)
        w = %{w | status: :retiring}

        state = %{
          state
          | workers: Map.put(state.workers, old, w),
            idle: List.delete(state.idle, old),
            sessions: sessions
        }

        state = requeue_for_any(state, old)
        if w.leases == [], do: retire(state, old), else: state

      _ ->
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
    %{pid: pid, recycle: reason} = state.workers[wid]
    GenServer.cast(pid, {:retire, reason})
    state
  end

  # A retiring worker has stopped: it leaves; its slot has its replacement already.
  defp retired(state, wid, w, reason) do
    lifetime = if w.ready_at, do: now() - w.ready_at, else: 0
    Krait.Telemetry.worker_down(state.name, wid, reason, :retiring)
    Krait.Telemetry.worker_recycled(state.name, wid, w.recycle, lifetime, w.calls)
    Krait.Metrics.recycled(state.name, w.recycle)
    update_in(state.recycled[w.recycle], &(&1 + 1))
  end

  # A caller saw the worker's process or connection die during its call: the worker leaves the pool
  # now (and is told to stop, so its OS process goes too) rather than when its own DOWN arrives.
  defp lost(state, wid) do
    case Enum.find(state.worker_mons, fn {_mon, w} -> w == wid end) do
      {mon, ^wid} ->
        pid = state.workers[wid].pid
        Process.demonitor(mon, [:flush])
        GenServer.cast(pid, :lost)
        worker_down(state, mon, :connection_lost, [])

      nil ->
        state
    end
  end

  defp worker_down(state, mon, reason, output) do
    {wid, worker_mons} = Map.pop(state.worker_mons, mon)
    state = withdraw_cell(state, wid, :drop)
    {w, workers} = Map.pop(state.workers, wid)

    state = %{
      state
      | worker_mons: worker_mons,
        workers: workers,
        idle: List.delete(state.idle, wid)
    }

    cond do
      w.status == :retiring -> state |> drop_leases(w) |> retired(wid, w, reason)
      w.successor_of != nil -> replacement_failed(state, wid, w, reason, output)
      true -> slot_worker_down(state, wid, w, reason, output)
    end
  end

  # A replacement died before it was ready: the worker it was to replace goes on serving.
  defp replacement_failed(state, wid, w, reason, output) do
    Krait.Telemetry.worker_down(state.name, wid, reason, :starting)
    old = w.successor_of
    error = %{worker_id: wid, reason: unwrap(reason), output: Enum.join(output, "\n")}

    Logger.error(
      "Krait worker #{error.worker_id}, replacing #{old}, failed to start (#{inspect(error.reason)}); " <>
        "#{old} goes on serving"
    )

    state = put_in(state.slots[w.slot].last_error, error)

    case state.workers[old] do
      %{status: status} when status in [:idle, :busy] ->
        retry_successor(state, old)

      # the worker it was to replace is gone too: the slot restarts as after any failed start
      _ ->
        state = put_in(state.slots[w.slot].successor, nil)
        restart_after_down(state, w, wid, reason, output)
    end
  end

  defp slot_worker_down(state, wid, w, reason, output) do
    Krait.Telemetry.worker_down(state.name, wid, reason, w.status)

    # a failed start is logged once, with its cause and backoff, by restart_after_down/5
    if w.status != :starting do
      Logger.warning("Krait worker #{wid} exited (#{inspect(reason)}); restarting",
        worker_id: wid
      )
    end

    state = drop_leases(state, w)
    state = requeue_own_waiters(state, wid)

    # a retired slot (its endpoint left the DNS answer) is not restarted
    cond do
      not Map.has_key?(state.slots, w.slot) ->
        state

      # being replaced: the replacement, already starting, is the slot's worker now
      (successor = state.slots[w.slot].successor) != nil ->
        state = put_in(state.workers[successor].successor_of, nil)
        state = put_in(state.slots[w.slot].worker_id, successor)
        put_in(state.slots[w.slot].successor, nil)

      true ->
        restart_after_down(state, w, wid, reason, output)
    end
  end

  # The callers holding a worker that went get a transport error from its connection; their
  # checkins will be ignored.
  defp drop_leases(state, w) do
    Enum.reduce(w.leases, state, fn ref, acc ->
      case acc.leases[ref] do
        %{timer: timer} = lease ->
          if timer, do: :erlang.cancel_timer(timer)
          acc = forget_mon(acc, lease)
          %{acc | leases: Map.delete(acc.leases, ref)}

        _ ->
          acc
      end
    end)
  end

  defp restart_after_down(state, w, wid, reason, output) do
    stable? = w.ready_at != nil and now() - w.ready_at > @stable_after
    slot = state.slots[w.slot]
    failures = if stable?, do: 1, else: slot.failures + 1
    slot = %{slot | failures: failures, restarts: slot.restarts + 1}

    if w.status == :starting do
      error = %{worker_id: wid, reason: unwrap(reason), output: Enum.join(output, "\n")}
      slot = %{slot | start_failed: true, last_error: error}
      failed_start(put_in(state.slots[w.slot], slot), w.slot, error)
    else
      schedule_restart(put_in(state.slots[w.slot], slot), w.slot)
    end
  end

  # A start failed: the pool may now be failing, the slot restarts after its backoff, and the
  # failure is one log line.
  defp failed_start(state, slot, error) do
    was_failing? = state.failing != nil
    state = state |> check_failing(error) |> schedule_restart(slot)
    log_failed_start(state, slot, error, not was_failing? and state.failing != nil)
  end

  # Attempts 1-3, then attempts 4, 8, 16... (the log thins out as the backoff grows), and at least
  # one line every @failed_start_log_every ms; the others at :debug.
  @failed_start_log_every 600_000

  defp log_failed_start(state, slot, error, now_failing?) do
    s = state.slots[slot]
    attempt = s.failures
    now = now()

    shown? =
      attempt <= 3 or Bitwise.band(attempt, attempt - 1) == 0 or s.logged_at == nil or
        now - s.logged_at >= @failed_start_log_every

    cause =
      case error.output |> String.split("\n", trim: true) |> List.last() do
        nil -> ""
        line -> ": " <> line
      end

    fast = if now_failing?, do: "; no worker is up: calls fail fast until one starts", else: ""

    text =
      "Krait worker #{error.worker_id} failed to start (attempt #{attempt}, " <>
        "#{start_reason(error.reason)})#{cause}; next attempt in #{s.backoff} ms#{fast}"

    if shown? do
      Logger.error(text, worker_id: error.worker_id)
      put_in(state.slots[slot].logged_at, now)
    else
      Logger.debug(text, worker_id: error.worker_id)
      state
    end
  end

  defp start_reason({:exit_status, code}), do: "exit status #{code}"
  defp start_reason(:startup_timeout), do: "not ready within its startup_timeout"
  defp start_reason(reason), do: inspect(reason)

  defp unwrap({:shutdown, reason}), do: reason
  defp unwrap(reason), do: reason

  # The pool is failing when no worker is up and every slot's last start failed: nothing will serve
  # the queue soon, so waiting callers (and new ones, see place/2) get the start error now.
  defp check_failing(state, error) do
    if Slots.failing?(state.workers, state.slots) do
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
    errors =
      for {slot, e} <- Enum.sort(state.endpoints),
          do: {e.label, get_in(state.slots, [slot, :last_error, :reason])}

    Map.put(error, :endpoints, errors ++ state.dns_errors)
  end

  ## A remote pool's endpoints: a slot per endpoint, DNS names re-resolved

  defp resolve_endpoints(state) do
    config = state.config
    {found, dns_errors} = Endpoints.resolve(config.endpoints)
    keys = MapSet.new(found, & &1.key)
    current = MapSet.new(state.endpoints, fn {_slot, e} -> e.key end)

    state =
      Enum.reduce(state.endpoints, %{state | dns_errors: dns_errors}, fn {slot, e}, acc ->
        if MapSet.member?(keys, e.key), do: acc, else: retire_slot(acc, slot, e)
      end)

    state =
      found
      |> Enum.reject(&MapSet.member?(current, &1.key))
      |> Enum.reduce(state, fn e, acc ->
        slot = Enum.max(Map.keys(acc.slots), fn -> 0 end) + 1

        if acc.endpoints != %{},
          do: Logger.info("Krait pool #{inspect(acc.name)}: new endpoint #{e.label}")

        start_worker(%{acc | endpoints: Map.put(acc.endpoints, slot, e)}, slot, 0)
      end)

    if Endpoints.dns?(config.endpoints),
      do: Process.send_after(self(), :resolve_endpoints, config.dns_interval)

    if found == [] do
      error = %{
        worker_id: nil,
        reason: :no_endpoints,
        output: "no endpoint resolves: #{inspect(dns_errors)}"
      }

      state |> Map.put(:failing, with_endpoint_errors(state, error)) |> fail_waiters()
    else
      state
    end
  end

  defp retire_slot(state, slot, endpoint) do
    Logger.info(
      "Krait pool #{inspect(state.name)}: endpoint #{endpoint.label} is gone; its worker leaves"
    )

    {s, slots} = Map.pop(state.slots, slot)
    if s.timer, do: Process.cancel_timer(s.timer)
    state = %{state | slots: slots, endpoints: Map.delete(state.endpoints, slot)}

    case Enum.find(state.worker_mons, fn {_mon, wid} -> state.workers[wid].slot == slot end) do
      {mon, wid} ->
        pid = state.workers[wid].pid
        Process.demonitor(mon, [:flush])
        GenServer.cast(pid, :lost)
        worker_down(state, mon, :endpoint_gone, [])

      nil ->
        state
    end
  end

  defp slot_count(state), do: map_size(state.slots)

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
    {idle, state} = {state.idle, %{state | idle: []}}

    Enum.reduce(idle, state, fn idle_wid, acc ->
      case acc.workers[idle_wid] do
        %{status: :idle} -> serve(acc, idle_wid)
        _ -> acc
      end
    end)
  end

  defp schedule_restart(state, slot) do
    s = state.slots[slot]
    %{backoff_min: min, backoff_max: max} = state.config

    delay = Slots.restart_delay(s.failures, min, max)

    timer = Process.send_after(self(), {:restart_slot, slot}, delay)
    put_in(state.slots[slot], Map.merge(s, %{timer: timer, backoff: delay}))
  end

  ## Stats and readiness

  defp ready_count(state), do: Slots.ready_count(state.workers)

  defp notify_awaiting(%{awaiting: []} = state), do: state

  defp notify_awaiting(state) do
    if ready_count(state) >= slot_count(state) do
      Enum.each(state.awaiting, &GenServer.reply(&1, :ok))
      %{state | awaiting: []}
    else
      state
    end
  end

  defp build_stats(state) do
    # a slot's worker: not a replacement still starting, not a retiring one
    by_slot =
      for {wid, w} <- state.workers,
          w.status != :retiring and w.successor_of == nil,
          into: %{},
          do: {w.slot, {wid, w}}

    workers =
      for {slot, s} <- Enum.sort(state.slots) do
        case by_slot[slot] do
          {wid, w} ->
            %{
              slot: slot,
              id: wid,
              status: w.status,
              pid: w.pid,
              os_pid: w.os_pid,
              grpc_port: w.grpc_port,
              http_port: w.http_port,
              endpoint: endpoint(state, slot),
              in_flight: length(w.leases),
              calls: w.calls,
              restarts: s.restarts,
              recycles: s.recycles,
              recycle: w.recycle,
              replacement: s.successor,
              rss_mb: w.rss_mb,
              last_error: s.last_error
            }

          nil ->
            %{
              slot: slot,
              id: nil,
              status: :restarting,
              pid: nil,
              os_pid: nil,
              grpc_port: nil,
              http_port: nil,
              endpoint: endpoint(state, slot),
              in_flight: 0,
              calls: 0,
              restarts: s.restarts,
              recycles: s.recycles,
              recycle: nil,
              replacement: s.successor,
              rss_mb: nil,
              last_error: s.last_error
            }
        end
      end

    count = fn status -> Enum.count(workers, &(&1.status == status)) end

    %{
      size: slot_count(state),
      ready: count.(:idle) + count.(:busy),
      idle: count.(:idle),
      busy: count.(:busy),
      starting: count.(:starting) + count.(:restarting),
      queue_length: Queue.size(state.queue),
      sessions: Sessions.size(state.sessions),
      failing: state.failing,
      # the token of a pool whose started workers listen (see Krait.Pool.Config): what other
      # callers of those ports need
      token: if(state.config.token, do: state.config.token.()),
      workers: workers,
      # replaced workers finishing their calls (see Krait.Pool.Recycle), and the count so far by reason
      retiring:
        for(
          {wid, %{status: :retiring} = w} <- Enum.sort(state.workers),
          do: %{id: wid, slot: w.slot, reason: w.recycle, in_flight: length(w.leases), pid: w.pid}
        ),
      recycled: state.recycled
    }
  end

  defp endpoint(state, slot) do
    case state.endpoints[slot] do
      nil -> nil
      e -> e.label
    end
  end

  defp schedule_session_sweep(%{session_ttl: :infinity}), do: :ok

  defp schedule_session_sweep(%{session_ttl: ttl}),
    do: Process.send_after(self(), :sweep_sessions, Kernel.min(ttl, 60_000))

  defp now, do: System.monotonic_time(:millisecond)
end
