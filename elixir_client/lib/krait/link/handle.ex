defmodule Krait.Link.Handle do
  @moduledoc """
  What a caller needs to write a local link worker's frames itself, without a hop through the
  `Krait.Worker` process: the worker's Port (any process may write to a Port; its output still goes to
  the worker), its table of open calls (public ETS, owned by the worker) and two atomics (the next
  call id, and the gate: 1 while the worker takes calls).

  A call's row is `{id, stream_ref, owner, input_owner, unacked}`. The caller inserts it before it
  writes `OPEN`, so the worker can route every frame of the call by id; the worker monitors the owner
  when the call's first frame comes back (a caller that died before is cancelled then, and one that
  died before writing `OPEN` is reaped: see `Krait.Link.Calls.reap/1`). Acknowledgements count into
  the row (`unacked`) and the caller returns credit to the worker in steps, itself.

  When the worker stops it closes the gate, then takes every row and fails its call: a caller that
  finds the gate closed takes its own row back (the call never reached the worker); if the worker
  took it first, the worker's answer (`unprocessed`) is on its way.
  """

  alias Krait.Link.Frame

  # Bytes of message payload a call may have in flight before its owner acknowledges them (the same
  # window the gRPC channel gives a stream); credit is returned in quarters of it.
  @window 4 * 1024 * 1024
  @credit_step div(@window, 4)
  # atomics indexes
  @next_id 1
  @gate 2
  # the row's unacked position
  @unacked 5

  @enforce_keys [:port, :tab, :counters]
  defstruct [:port, :tab, :counters]

  @type t :: %__MODULE__{port: port(), tab: :ets.tid(), counters: :atomics.atomics_ref()}

  @typedoc "A direct call's stream ref: its call id and a unique reference."
  @type stream_ref :: {pos_integer(), reference()}

  @doc "The flow-control window a call starts with (bytes)."
  @spec window() :: pos_integer()
  def window, do: @window

  @doc "Acknowledged bytes that make the caller return credit to the worker."
  @spec credit_step() :: pos_integer()
  def credit_step, do: @credit_step

  @doc "A new handle for `port`: an empty table of calls (owned by the caller, the worker) and an open gate."
  @spec new(port()) :: t()
  def new(port) do
    counters = :atomics.new(2, signed: false)
    :atomics.put(counters, @gate, 1)
    tab = :ets.new(__MODULE__, [:set, :public, write_concurrency: true])
    %__MODULE__{port: port, tab: tab, counters: counters}
  end

  @doc "A new call id (unique per worker)."
  @spec next_id(t()) :: pos_integer()
  def next_id(%__MODULE__{counters: counters}), do: :atomics.add_get(counters, @next_id, 1)

  @doc "Closes the gate: callers that have not written `OPEN` yet take their call back."
  @spec close(t()) :: :ok
  def close(%__MODULE__{counters: counters}), do: :atomics.put(counters, @gate, 0)

  @doc """
  Opens a call from the caller's process: registers it, then writes its `OPEN` frame. `{:error,
  :noproc}` when the call certainly never reached the worker (it is stopping, or gone).
  """
  @spec open(t(), pid(), pid(), String.t(), iodata(), non_neg_integer(), map()) ::
          {:ok, stream_ref()} | {:error, :noproc}
  def open(
        %__MODULE__{tab: tab, counters: counters} = h,
        owner,
        input_owner,
        method,
        request,
        timeout_ms,
        metadata
      ) do
    id = :atomics.add_get(counters, @next_id, 1)
    sref = {id, make_ref()}
    :ets.insert(tab, {id, sref, owner, input_owner, 0})

    if :atomics.get(counters, @gate) == 1 and
         command(h, Frame.open(id, method, request, timeout_ms, @window, metadata)) do
      {:ok, sref}
    else
      case :ets.take(tab, id) do
        [_] -> {:error, :noproc}
        # the stopping worker took the row first: its `unprocessed` answer is on its way
        [] -> {:ok, sref}
      end
    end
  rescue
    # the table is gone with its worker
    ArgumentError -> {:error, :noproc}
  end

  @doc "The owner took `bytes` of call `id`'s messages: credit goes back to the worker in steps."
  @spec ack(t(), pos_integer(), non_neg_integer()) :: :ok
  def ack(%__MODULE__{tab: tab} = h, id, bytes) do
    unacked = :ets.update_counter(tab, id, {@unacked, bytes})

    if unacked >= @credit_step do
      :ets.update_counter(tab, id, {@unacked, -unacked})
      command(h, Frame.credit(id, unacked))
    end

    :ok
  rescue
    # the call is over
    ArgumentError -> :ok
  end

  @doc "Cancels call `id` (the worker stops the tool); its later frames are dropped."
  @spec cancel(t(), pos_integer(), Krait.Channel.cancel_reason()) :: :ok
  def cancel(%__MODULE__{tab: tab} = h, id, reason) do
    case :ets.take(tab, id) do
      [_] -> command(h, Frame.cancel(id, reason))
      [] -> :ok
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc "Writes `frame` (input, its end, a handler reply) for call `id` while the call is open."
  @spec to_worker(t(), pos_integer(), iodata()) :: :ok
  def to_worker(%__MODULE__{tab: tab} = h, id, frame) do
    if :ets.member(tab, id), do: command(h, frame)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc "Writes `frame` to the worker's Port: false when the Port is closed."
  @spec command(t(), iodata()) :: boolean()
  def command(%__MODULE__{port: port}, frame) do
    Port.command(port, frame)
  rescue
    # the port has just closed: its exit message follows, and the worker fails every call
    ArgumentError -> false
  end
end
