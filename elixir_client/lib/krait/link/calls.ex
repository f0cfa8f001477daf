defmodule Krait.Link.Calls do
  @moduledoc """
  The open calls of one worker's local link, kept by the `Krait.Worker` process that owns the Port.

  The calls live in the worker's public table (`Krait.Link.Handle`): a local caller registers its
  call there and writes its frames to the Port itself; a caller on another node (or without the
  registry) sends them to the worker process, which does the same for it (`open/8`, `ack/3`...).
  For each call the worker keeps what only it needs: a monitor of the owner (a caller that dies has
  its call cancelled), taken when the call's first frame comes back (or at `open/8`), and whether
  the worker said `STARTED`.

  Frames from the worker are routed to owners as `Krait.Channel` messages (`CREDIT` from the worker,
  input credit, to the input owner; `HANDLER_CALL` to the owner); frames for calls that are no longer
  here (cancelled, their owner dead) are dropped, and so is input for them.
  """

  alias Krait.GRPC.Error
  alias Krait.Link.{Frame, Handle}
  alias Krait.Proto.RpcStatus

  defstruct handle: nil, port: nil, watched: %{}, monitors: %{}, refs: %{}

  @type t :: %__MODULE__{
          handle: Handle.t(),
          port: port() | nil,
          watched: %{pos_integer() => {reference(), boolean()}},
          monitors: %{reference() => pos_integer()},
          refs: %{reference() => pos_integer()}
        }

  @doc "An empty table for `port`."
  @spec new(port()) :: t()
  def new(port), do: %__MODULE__{handle: Handle.new(port), port: port}

  @doc "The handle callers write this worker's frames with."
  @spec handle(t()) :: Handle.t()
  def handle(%__MODULE__{handle: handle}), do: handle

  @doc """
  Opens a call sent to the worker process for `owner` (stream `ref`) and sends its `OPEN` frame;
  `input_owner` gets the call's input credit.
  """
  @spec open(t(), reference(), pid(), String.t(), iodata(), non_neg_integer(), map(), pid()) ::
          t()
  def open(t, ref, owner, method, request, timeout_ms, metadata, input_owner \\ nil) do
    id = Handle.next_id(t.handle)
    :ets.insert(t.handle.tab, {id, ref, owner, input_owner || owner, 0})
    command(t, Frame.open(id, method, request, timeout_ms, Handle.window(), metadata))
    t = watch(t, id, owner, false)
    %{t | refs: Map.put(t.refs, ref, id)}
  end

  @doc "Handles a frame from the worker about call `id`."
  @spec frame(t(), Frame.kind(), pos_integer(), Frame.payload()) :: t()
  def frame(t, kind, id, payload) do
    case :ets.lookup(t.handle.tab, id) do
      [{_, sref, owner, _, _}] ->
        route(t, kind, id, sref, owner, payload)

      # cancelled by its caller: the worker's END is the last frame of the call
      [] when kind == :end ->
        forget(t, id, nil)

      [] ->
        t
    end
  end

  defp route(t, :end, id, sref, owner, payload) do
    send(owner, {:krait_stream, sref, {:done, outcome(payload)}})
    :ets.delete(t.handle.tab, id)
    forget(t, id, sref)
  end

  defp route(t, :message, id, sref, owner, payload) do
    send(owner, {:krait_stream, sref, {:messages, [payload], byte_size(payload)}})
    watch(t, id, owner, false)
  end

  # A run of plain JSON chunks: delivered as `{:json_chunks, first_seq, array}` (Krait.Call.Cursor decodes
  # the array with one JSON call), its bytes acknowledged as a MESSAGE's.
  defp route(t, :json_chunks, id, sref, owner, {first_seq, array}) do
    send(
      owner,
      {:krait_stream, sref, {:messages, [{:json_chunks, first_seq, array}], byte_size(array)}}
    )

    watch(t, id, owner, false)
  end

  defp route(t, :handler_call, id, sref, owner, payload) do
    send(owner, {:krait_stream, sref, {:handler_call, payload}})
    watch(t, id, owner, false)
  end

  # Kept here, not sent to the owner: only a worker death needs it (see fail_all/2).
  defp route(t, :started, id, _sref, owner, _payload), do: watch(t, id, owner, true)
  defp route(t, _kind, _id, _sref, _owner, _payload), do: t

  # The owner is monitored from its call's first frame back on (a dead owner's monitor fires at once).
  defp watch(t, id, owner, started) do
    case t.watched do
      %{^id => {_mon, true}} ->
        t

      %{^id => {mon, false}} ->
        if started, do: %{t | watched: Map.put(t.watched, id, {mon, true})}, else: t

      _ ->
        mon = Process.monitor(owner)

        %{
          t
          | watched: Map.put(t.watched, id, {mon, started}),
            monitors: Map.put(t.monitors, mon, id)
        }
    end
  end

  @doc "The worker granted call `id` input credit: `items` more items, `bytes` more bytes of item data."
  @spec input_credit(t(), pos_integer(), non_neg_integer(), non_neg_integer()) :: t()
  def input_credit(t, id, items, bytes) do
    case :ets.lookup(t.handle.tab, id) do
      [{_, sref, _owner, input_owner, _}] ->
        send(input_owner, {:krait_stream, sref, {:credit, items, bytes}})
        t

      [] ->
        t
    end
  end

  @doc "Input items (an encoded `InputBatch`) for stream `ref`: sent as an `INPUT` frame."
  @spec input(t(), term(), iodata()) :: t()
  def input(t, ref, batch), do: to_worker(t, ref, &Frame.input(&1, batch))

  @doc "The end of stream `ref`'s input (`:ok`, or `{:error, message}`): an `INPUT_END` frame."
  @spec input_end(t(), term(), :ok | {:error, String.t()}) :: t()
  def input_end(t, ref, result), do: to_worker(t, ref, &Frame.input_end(&1, result))

  @doc "The answer to one of stream `ref`'s handler calls (an encoded `HandlerReply`)."
  @spec handler_reply(t(), term(), iodata()) :: t()
  def handler_reply(t, ref, reply), do: to_worker(t, ref, &Frame.handler_reply(&1, reply))

  defp to_worker(t, ref, frame) do
    case id_of(t, ref) do
      nil -> :ok
      id -> if :ets.member(t.handle.tab, id), do: command(t, frame.(id))
    end

    t
  end

  # A stream ref: a direct call's `{id, ref}`, or the reference of a call opened through this process.
  defp id_of(_t, {id, ref}) when is_integer(id) and is_reference(ref), do: id
  defp id_of(t, ref), do: Map.get(t.refs, ref)

  # END carries a google.rpc.Status: code 0 is success; otherwise it is the error, and the same bytes
  # are what gRPC's grpc-status-details-bin holds (the ToolError is in its details).
  defp outcome(<<>>), do: :ok

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
  @spec ack(t(), term(), non_neg_integer()) :: t()
  def ack(t, ref, bytes) do
    case id_of(t, ref) do
      nil -> :ok
      id -> Handle.ack(t.handle, id, bytes)
    end

    t
  end

  @doc "The owner gave up on stream `ref`: tell the worker to stop the call and forget it."
  @spec cancel(t(), term(), Krait.Channel.cancel_reason()) :: t()
  def cancel(t, ref, reason \\ :cancelled) do
    case id_of(t, ref) do
      nil ->
        t

      id ->
        case :ets.take(t.handle.tab, id) do
          [{_, sref, _, _, _}] ->
            command(t, Frame.cancel(id, reason))
            forget(t, id, sref)

          [] ->
            t
        end
    end
  end

  @doc "A monitored owner died: its call is cancelled. Returns `:unknown` for other monitors."
  @spec owner_down(t(), reference()) :: t() | :unknown
  def owner_down(t, mon) do
    case Map.fetch(t.monitors, mon) do
      {:ok, id} ->
        case :ets.take(t.handle.tab, id) do
          [{_, sref, _, _, _}] ->
            command(t, Frame.cancel(id))
            forget(t, id, sref)

          [] ->
            forget(t, id, nil)
        end

      :error ->
        :unknown
    end
  end

  @doc """
  Cancels the calls whose owner died before the worker heard of them: registered, but the owner died
  before (or just after) writing `OPEN`, so no frame came back to monitor it by. A `CANCEL` for a call
  the worker never opened is ignored by it.
  """
  @spec reap(t()) :: t()
  def reap(%__MODULE__{port: nil} = t), do: t

  def reap(t) do
    tab = t.handle.tab

    for [id, owner] <- :ets.match(tab, {:"$1", :_, :"$2", :_, :_}),
        not is_map_key(t.watched, id),
        node(owner) == node() and not Process.alive?(owner),
        [_] <- [:ets.take(tab, id)] do
      command(t, Frame.cancel(id))
    end

    t
  end

  @doc """
  The worker is gone: every open call ends with `UNAVAILABLE`; those it had not `STARTED` are marked
  unprocessed (they never ran, and may be retried elsewhere). The gate closes first: a caller that
  has not written its `OPEN` yet takes its call back itself.
  """
  @spec fail_all(t(), String.t()) :: t()
  def fail_all(t, message) do
    tab = t.handle.tab
    Handle.close(t.handle)

    for id <- :ets.select(tab, [{{:"$1", :_, :_, :_, :_}, [], [:"$1"]}]),
        [{_, sref, owner, _, _}] <- [:ets.take(tab, id)] do
      error =
        if match?(%{^id => {_, true}}, t.watched),
          do: Error.unavailable(message),
          else: Error.unprocessed(message)

      send(owner, {:krait_stream, sref, {:done, {:error, error}}})
    end

    for {_id, {mon, _}} <- t.watched, do: Process.demonitor(mon, [:flush])
    %{t | watched: %{}, refs: %{}, monitors: %{}, port: nil}
  end

  @doc "The number of open calls."
  @spec size(t()) :: non_neg_integer()
  def size(t), do: :ets.info(t.handle.tab, :size)

  defp forget(t, id, sref) do
    refs = if is_reference(sref), do: Map.delete(t.refs, sref), else: t.refs

    case Map.pop(t.watched, id) do
      {{mon, _}, watched} ->
        Process.demonitor(mon, [:flush])
        %{t | watched: watched, monitors: Map.delete(t.monitors, mon), refs: refs}

      {nil, _} ->
        %{t | refs: refs}
    end
  end

  defp command(%{port: nil}, _frame), do: :ok
  defp command(t, frame), do: Handle.command(t.handle, frame)
end
