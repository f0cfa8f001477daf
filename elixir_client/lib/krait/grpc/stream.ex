defmodule Krait.GRPC.Stream do
  @moduledoc """
  The state of one gRPC call on a `Krait.GRPC.Connection`: request bytes still to send,
  response reassembly, and both directions of stream-level flow control.

  Receive flow control (what window the server gets back, and when):

    * unary calls return every byte eagerly: the response is one message the caller waits
      for anyway;
    * server-streaming calls return bytes only when the owner acknowledges the messages it
      consumed (`ack/2`), so a slow owner holds at most about one stream window of
      unconsumed data. Padding is returned at once. A message larger than half the window
      could never complete that way, so once the owner has acknowledged everything
      delivered, the bytes of the partial message are lent to the server; the loan is paid
      back out of the owner's acknowledgements of that message. Memory stays bounded by
      about one window plus the largest message.

  Window updates are batched: bytes are handed back once a quarter of the window is due.

  Sending: request bytes wait in a queue until the server's windows let them go. A plain
  call's request ends (END_STREAM) when its queue drains; a duplex call's (`duplex: true`,
  `ExecuteToolDuplex`) stays open for more messages while the call runs.
  """

  alias Krait.GRPC.MessageBuffer

  defstruct [
    :id,
    :ref,
    :kind,
    :owner,
    :monitor,
    :from,
    :timer,
    :input_owner,
    duplex: false,
    window: 4_194_304,
    send_queue: :queue.new(),
    send_size: 0,
    send_window: 65_535,
    recv_window: 4_194_304,
    returnable: 0,
    loan: 0,
    partial_loaned: 0,
    unacked: 0,
    buffer: MessageBuffer.new(),
    messages: [],
    headers: nil,
    http_status: nil
  ]

  @typedoc """
  `window` is the stream window we advertised; `recv_window` what the server may still
  send; `returnable` bytes due back to it; `loan` bytes returned ahead of acknowledgement;
  `unacked` bytes delivered to the owner and not yet acknowledged;
  `send_window` what we may still send; `messages` (unary only) the response messages,
  reversed; `headers` the response headers once received. A `duplex` stream keeps its request
  side open after its queue drains, and sends input credit to
  `input_owner`.
  """
  @type t :: %__MODULE__{
          id: pos_integer,
          ref: reference,
          kind: :unary | :stream,
          owner: pid,
          monitor: reference,
          from: GenServer.from() | nil,
          timer: reference | nil,
          input_owner: pid | nil,
          duplex: boolean,
          window: pos_integer,
          send_queue: :queue.queue(binary),
          send_size: non_neg_integer,
          send_window: integer,
          recv_window: integer,
          returnable: non_neg_integer,
          loan: non_neg_integer,
          partial_loaned: non_neg_integer,
          unacked: non_neg_integer,
          buffer: MessageBuffer.t(),
          messages: [binary],
          headers: nil | [{binary, binary}],
          http_status: nil | non_neg_integer
        }

  @doc "A new stream; `fields` sets any struct field."
  @spec new(keyword) :: t
  def new(fields), do: struct!(__MODULE__, fields)

  @doc """
  Accounts one DATA frame (`flow_length` includes padding) and reassembles messages.
  Returns the messages completed and their flow-controlled size (what the owner acks).
  """
  @spec receive_data(t, binary, non_neg_integer) ::
          {:ok, [binary], non_neg_integer, t} | {:error, :flow_control | :compressed_message}
  def receive_data(%__MODULE__{} = stream, _data, flow_length)
      when flow_length > stream.recv_window,
      do: {:error, :flow_control}

  def receive_data(%__MODULE__{} = stream, data, flow_length) do
    case MessageBuffer.push(stream.buffer, data) do
      {:ok, messages, bytes, buffer} ->
        stream = %{stream | buffer: buffer, recv_window: stream.recv_window - flow_length}
        {:ok, messages, bytes, account(stream, messages, bytes, flow_length, byte_size(data))}

      {:error, _} = error ->
        error
    end
  end

  # Unary: everything received is handed back at once, partial messages included.
  defp account(%{kind: :unary} = stream, messages, _delivered, flow_length, _data_size) do
    %{
      stream
      | messages: Enum.reverse(messages, stream.messages),
        returnable: stream.returnable + flow_length
    }
  end

  # Stream: only padding now; message bytes when acknowledged (or lent, see maybe_lend/1).
  defp account(%{kind: :stream} = stream, messages, delivered, flow_length, data_size) do
    # A new partial message starts with nothing lent on it.
    partial_loaned = if messages == [], do: stream.partial_loaned, else: 0

    %{
      stream
      | partial_loaned: partial_loaned,
        unacked: stream.unacked + delivered,
        returnable: stream.returnable + flow_length - data_size
    }
    |> maybe_lend()
  end

  # Lends the server window for a partial message only once the owner has acknowledged
  # everything delivered: then nothing else can reopen the window, and a message larger
  # than half of it would otherwise never complete.
  defp maybe_lend(%{unacked: 0, window: window} = stream) do
    partial = MessageBuffer.buffered(stream.buffer)
    unloaned = partial - stream.partial_loaned

    if unloaned >= div(window, 2) do
      %{
        stream
        | loan: stream.loan + unloaned,
          returnable: stream.returnable + unloaned,
          partial_loaned: partial
      }
    else
      stream
    end
  end

  defp maybe_lend(stream), do: stream

  @doc """
  The owner consumed messages worth `bytes` (the count it was given with them): those
  bytes become returnable, minus any loan still outstanding.
  """
  @spec ack(t, non_neg_integer) :: t
  def ack(%__MODULE__{loan: loan} = stream, bytes) do
    bytes = min(bytes, stream.unacked)
    paid = min(loan, bytes)

    maybe_lend(%{
      stream
      | loan: loan - paid,
        unacked: stream.unacked - bytes,
        returnable: stream.returnable + bytes - paid
    })
  end

  @doc """
  Takes the window increment to send now, if at least a quarter of the window is due.
  """
  @spec take_window_update(t) :: {non_neg_integer, t}
  def take_window_update(%__MODULE__{returnable: due, window: window} = stream)
      when due > 0 and due >= div(window, 4) do
    {due, %{stream | returnable: 0, recv_window: stream.recv_window + due}}
  end

  def take_window_update(stream), do: {0, stream}

  @doc "Queues request bytes (a binary or a list of binaries) to send."
  @spec enqueue(t, binary | [binary]) :: t
  def enqueue(%__MODULE__{} = stream, parts) do
    {queue, size} =
      parts
      |> List.wrap()
      |> Enum.reduce({stream.send_queue, stream.send_size}, fn
        <<>>, acc -> acc
        part, {queue, size} -> {:queue.in(part, queue), size + byte_size(part)}
      end)

    %{stream | send_queue: queue, send_size: size}
  end

  @doc "Takes up to `max` queued request bytes, as iodata of sub-binaries (no copy)."
  @spec take_send(t, non_neg_integer) :: {iodata, non_neg_integer, t}
  def take_send(%__MODULE__{} = stream, max) do
    {taken, size, queue} = take(stream.send_queue, max, [], 0)
    {taken, size, %{stream | send_queue: queue, send_size: stream.send_size - size}}
  end

  defp take(queue, 0, acc, size), do: {Enum.reverse(acc), size, queue}

  defp take(queue, max, acc, size) do
    case :queue.out(queue) do
      {:empty, queue} ->
        {Enum.reverse(acc), size, queue}

      {{:value, part}, queue} when byte_size(part) <= max ->
        take(queue, max - byte_size(part), [part | acc], size + byte_size(part))

      {{:value, part}, queue} ->
        <<head::binary-size(max), tail::binary>> = part
        {Enum.reverse([head | acc]), size + max, :queue.in_r(tail, queue)}
    end
  end
end
