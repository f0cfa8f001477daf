defmodule Krait.Link.Calls do
  @moduledoc """
  The open calls of one worker's local link, kept by the `Krait.Worker` process that owns the Port:
  call ids for new calls, and for each call its owner (monitored: a caller that dies has its call
  cancelled), its input owner (the process that sends its input, given the input credit: not
  monitored, as it lives and dies with the owner), whether the worker said `STARTED`, and the credit
  its owner has acknowledged but not yet returned to the worker.

  Frames from the worker are routed to owners as `Krait.Channel` messages (`CREDIT` from the worker,
  input credit, to the input owner; `HANDLER_CALL` to the owner); frames for calls that are no longer
  here (cancelled, their owner dead) are dropped, and so is input for them.
  """

  alias Krait.GRPC.Error
  alias Krait.Link.Frame
  alias Krait.Proto.RpcStatus

  # Bytes of message payload a call may have in flight before its owner acknowledges them (the same
  # window the gRPC channel gives a stream); credit is returned in quarters of it.
  @window 4 * 1024 * 1024
  @credit_step div(@window, 4)

  defstruct port: nil, next_id: 1, calls: %{}, refs: %{}, monitors: %{}

  @type t :: %__MODULE__{
          port: port() | nil,
          next_id: pos_integer(),
          calls: %{pos_integer() => map()},
          refs: %{reference() => pos_integer()},
          monitors: %{reference() => pos_integer()}
        }

  @doc "An empty table for `port`."
  @spec new(port()) :: t()
  def new(port), do: %__MODULE__{port: port}

  @doc """
  Opens a call for `owner` (stream `ref`) and sends its `OPEN` frame; `input_owner` gets the call's
  input credit.
  """
  @spec open(t(), reference(), pid(), String.t(), iodata(), non_neg_integer(), map(), pid()) ::
          t()
  def open(t, ref, owner, method, request, timeout_ms, metadata, input_owner \\ nil) do
    id = t.next_id
    mon = Process.monitor(owner)
    command(t, Frame.open(id, method, request, timeout_ms, @window, metadata))

    call = %{
      ref: ref,
      owner: owner,
      input_owner: input_owner || owner,
      mon: mon,
      started: false,
      unacked: 0
    }

    %{
      t
      | next_id: id + 1,
        calls: Map.put(t.calls, id, call),
        refs: Map.put(t.refs, ref, id),
        monitors: Map.put(t.monitors, mon, id)
    }
  end

  @doc "Handles a frame from the worker about call `id`."
  @spec frame(t(), Frame.kind(), pos_integer(), binary()) :: t()
  def frame(t, kind, id, payload) do
    case Map.fetch(t.calls, id) do
      {:ok, call} -> route(t, kind, id, call, payload)
      :error -> t
    end
  end

  # Kept here, not sent to the owner: only a worker death needs it (see fail_all/2).
  defp route(t, :started, id, call, _payload),
    do: %{t | calls: Map.put(t.calls, id, %{call | started: true})}

  defp route(t, :message, _id, call, payload) do
    send(call.owner, {:krait_stream, call.ref, {:messages, [payload], byte_size(payload)}})
    t
  end

  defp route(t, :end, id, call, payload) do
    send(call.owner, {:krait_stream, call.ref, {:done, outcome(payload)}})
    forget(t, id, call)
  end

  defp route(t, :handler_call, _id, call, payload) do
    send(call.owner, {:krait_stream, call.ref, {:handler_call, payload}})
    t
  end

  defp route(t, _kind, _id, _call, _payload), do: t

  @doc "The worker granted call `id` input credit: `items` more items, `bytes` more bytes of item data."
  @spec input_credit(t(), pos_integer(), non_neg_integer(), non_neg_integer()) :: t()
  def input_credit(t, id, items, bytes) do
    case Map.fetch(t.calls, id) do
      {:ok, call} ->
        send(call.input_owner, {:krait_stream, call.ref, {:credit, items, bytes}})
        t

      :error ->
        t
    end
  end

  @doc "Input items (an encoded `InputBatch`) for stream `ref`: sent as an `INPUT` frame."
  @spec input(t(), reference(), iodata()) :: t()
  def input(t, ref, batch), do: to_worker(t, ref, &Frame.input(&1, batch))

  @doc "The end of stream `ref`'s input (`:ok`, or `{:error, message}`): an `INPUT_END` frame."
  @spec input_end(t(), reference(), :ok | {:error, String.t()}) :: t()
  def input_end(t, ref, result), do: to_worker(t, ref, &Frame.input_end(&1, result))

  @doc "The answer to one of stream `ref`'s handler calls (an encoded `HandlerReply`)."
  @spec handler_reply(t(), reference(), iodata()) :: t()
  def handler_reply(t, ref, reply), do: to_worker(t, ref, &Frame.handler_reply(&1, reply))

  defp to_worker(t, ref, frame) do
    case Map.fetch(t.refs, ref) do
      {:ok, id} -> command(t, frame.(id))
      :error -> :ok
    end

    t
  end

  # END carries a google.rpc.Status: code 0 is success; otherwise it is the error, and the same bytes
  # are what gRPC's grpc-status-details-bin holds (the ToolError is in its details).
  defp outcome(payload) do
    case RpcStatus.decode(payload) do
      %{code: 0} ->
        :ok

      %{code: code, message: message} ->
        {:error, %Error{status: code, message: message, details: payload}}
    end
  rescue
    _ -> {:error, Error.internal("the worker sent an undecodable END frame")}
  end

  @doc "The owner took `bytes` of messages: return credit to the worker in steps."
  @spec ack(t(), reference(), non_neg_integer()) :: t()
  def ack(t, ref, bytes) do
    with {:ok, id} <- Map.fetch(t.refs, ref),
         {:ok, call} <- Map.fetch(t.calls, id) do
      unacked = call.unacked + bytes

      if unacked >= @credit_step do
        command(t, Frame.credit(id, unacked))
        %{t | calls: Map.put(t.calls, id, %{call | unacked: 0})}
      else
        %{t | calls: Map.put(t.calls, id, %{call | unacked: unacked})}
      end
    else
      :error -> t
    end
  end

  @doc "The owner gave up on stream `ref`: tell the worker to stop the call and forget it."
  @spec cancel(t(), reference()) :: t()
  def cancel(t, ref, reason \\ :cancelled) do
    case Map.fetch(t.refs, ref) do
      {:ok, id} ->
        command(t, Frame.cancel(id, reason))
        forget(t, id, Map.fetch!(t.calls, id))

      :error ->
        t
    end
  end

  @doc "A monitored owner died: its call is cancelled. Returns `:unknown` for other monitors."
  @spec owner_down(t(), reference()) :: t() | :unknown
  def owner_down(t, mon) do
    case Map.fetch(t.monitors, mon) do
      {:ok, id} ->
        command(t, Frame.cancel(id))
        call = Map.fetch!(t.calls, id)
        forget(t, id, call)

      :error ->
        :unknown
    end
  end

  @doc """
  The worker is gone: every open call ends with `UNAVAILABLE`; those it had not `STARTED` are marked
  unprocessed (they never ran, and may be retried elsewhere).
  """
  @spec fail_all(t(), String.t()) :: t()
  def fail_all(t, message) do
    for {_id, call} <- t.calls do
      error = if call.started, do: Error.unavailable(message), else: Error.unprocessed(message)
      send(call.owner, {:krait_stream, call.ref, {:done, {:error, error}}})
      Process.demonitor(call.mon, [:flush])
    end

    %{t | calls: %{}, refs: %{}, monitors: %{}, port: nil}
  end

  @doc "The number of open calls."
  @spec size(t()) :: non_neg_integer()
  def size(t), do: map_size(t.calls)

  defp forget(t, id, call) do
    Process.demonitor(call.mon, [:flush])

    %{
      t
      | calls: Map.delete(t.calls, id),
        refs: Map.delete(t.refs, call.ref),
        monitors: Map.delete(t.monitors, call.mon)
    }
  end

  defp command(%{port: nil}, _frame), do: :ok

  defp command(%{port: port}, frame) do
    Port.command(port, frame)
    :ok
  rescue
    # the port has just closed: its exit message follows and fails every call
    ArgumentError -> :ok
  end
end
