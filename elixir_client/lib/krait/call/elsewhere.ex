defmodule Krait.Call.Elsewhere do
  @moduledoc """
  A unary call run whole on another node of a cluster pool (`Krait.Pool.Cluster`): the caller sends
  the encoded request there in one message and gets the call's result back in one, where a lease
  from that node would cost a checkout round trip and then the call's frames through that node's
  worker process. The other node runs the call as its own callers' calls run (its idle worker
  claimed without a round trip, the frames written to the Port by the process that runs the call),
  with the caller's remaining time, call id and trace headers.

  Used only where that changes nothing a call's result depends on: a unary call without a session,
  an input stream or handlers (those stay with the caller's process: leases). What differs is where
  it is counted: its checkout event and metrics on the node that served it, its
  `[:krait, :call, ...]` events on the caller's. It never queues there: a node
  whose workers are all taken by the time the request arrives declines it (`:declined`), and the
  caller asks the next node or waits in its own node's queue.

  The caller's end is watched from both sides: the process that runs the call there monitors the
  caller and cancels the call when it dies (`Krait.Call.Cursor` watches that monitor while it
  waits; a process of its own for the watching would cost a hop); when that node goes down or the
  process dies, the call fails with a `:worker` error, as a call on a lease of that node's worker
  does.
  """

  alias Krait.Error
  alias Krait.Call.Cursor

  # The caller waits this long past the call's own deadline for the answer of the other node,
  # which enforces the deadline itself (its timeout error normally wins).
  @margin 5_000

  @doc """
  Runs the unary call (`path`, `request`, `tool`; `o`, the caller's options) on pool `name` of `node`:
  `{:ran, step}` with the call's final step (`{:result, value}` or `{:error, error}`), or
  `:declined` when that node had no idle worker.
  """
  @spec run(node(), atom(), String.t(), iodata(), map(), String.t() | atom()) ::
          {:ran, {:result, term()} | {:error, Error.t()}} | :declined
  def run(node, name, path, request, o, tool) do
    remaining = remaining(o.deadline)
    tag = make_ref()
    # what the other node needs of the options (no pid, no fun, no monotonic time of this node)
    spec = %{o | pool: name, deadline: remaining, handlers: %{}, input: nil, trace_context: nil}

    {pid, mon} =
      :erlang.spawn_opt(node, __MODULE__, :serve, [self(), tag, path, request, spec, tool], [
        :monitor
      ])

    receive do
      {^tag, answer} ->
        Process.demonitor(mon, [:flush])
        answer

      {:DOWN, ^mon, :process, ^pid, reason} ->
        {:ran, {:error, lost(node, tool, o, reason)}}
    after
      wait(remaining) ->
        Process.demonitor(mon, [:flush])
        Process.exit(pid, :kill)
        details = Map.put(details(tool, o), :timeout, o.timeout)
        {:ran, {:error, Error.new(:timeout, Error.deadline_message(o.timeout), details)}}
    end
  end

  @doc false
  # The other node's end (spawned there by run/6): runs the call, watching the caller (the cursor
  # cancels the call when the caller goes away), and answers the caller once.
  @spec serve(pid(), reference(), String.t(), iodata(), map(), String.t() | atom()) :: :ok
  def serve(caller, tag, path, request, spec, tool) do
    deadline = if spec.deadline == :infinity, do: :infinity, else: now() + spec.deadline
    o = Map.merge(spec, %{deadline: deadline, idle_only: true, watch: Process.monitor(caller)})

    answer =
      case Cursor.open(path, request, o, tool, :unary) do
        {:ok, cursor} -> Cursor.next(cursor)
        {:error, _} = error -> error
      end
      |> case do
        # no idle worker here (at first, or for a retry: the call never reached a worker): the
        # caller asks elsewhere
        {:error, %Error{category: :pool, details: %{reason: :no_idle}}} -> :declined
        step -> {:ran, step}
      end

    send(caller, {tag, answer})
    :ok
  end

  defp lost(node, tool, o, reason) do
    Error.new(
      :worker,
      "the call's node #{node} went away during the call (#{inspect(reason)})",
      details(tool, o)
    )
  end

  defp details(tool, o), do: %{tool_name: to_string(tool), call_id: o.call_id, pool: o.pool}

  defp wait(:infinity), do: :infinity
  defp wait(ms), do: ms + @margin

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - now(), 0)

  defp now, do: System.monotonic_time(:millisecond)
end
