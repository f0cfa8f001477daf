defmodule Krait.Link.Frame do
  @moduledoc """
  `krait.v1.LinkFrame` (`proto/krait/v1/link.proto`): the envelope of the local link, one per
  `{packet, 4}` packet on a worker's stdin/stdout (see `docs/link.md`).

  Written out rather than declared with `Krait.Proto.Message`: every message of every call on the link
  passes through here, encoding takes the request as iodata (no copy of a large argument), and
  decoding keeps `payload` a sub-binary of the packet.
  """

  import Bitwise

  alias Krait.Proto.Wire

  @kinds %{
    open: 1,
    started: 2,
    message: 3,
    end: 4,
    cancel: 5,
    credit: 6,
    log: 7,
    ready: 8,
    input: 9,
    input_end: 10,
    handler_call: 11,
    handler_reply: 12,
    json_chunks: 13
  }
  @names Map.new(@kinds, fn {name, n} -> {n, name} end)

  @typedoc "A frame's kind."
  @type kind ::
          :open
          | :started
          | :message
          | :end
          | :cancel
          | :credit
          | :log
          | :ready
          | :input
          | :input_end
          | :handler_call
          | :handler_reply
          | :json_chunks

  @typedoc """
  A frame's payload: a sub-binary of the packet; for `JSON_CHUNKS`, `{first_seq, array}`: the JSON array
  text of a run of plain JSON chunks and the seq of its first element.
  """
  @type payload :: binary() | {non_neg_integer(), binary()}

  @typedoc "A decoded frame from a worker: its kind, call id and payload."
  @type t :: {kind() | {:unknown, non_neg_integer()}, non_neg_integer(), payload()}

  @doc "An `OPEN` frame: starts call `call_id` of `method` with its encoded `request`."
  @spec open(pos_integer(), String.t(), iodata(), non_neg_integer(), non_neg_integer(), map()) ::
          iodata()
  def open(call_id, method, request, timeout_ms, credit, metadata) do
    [
      Wire.field(1, :uint64, call_id),
      Wire.field(2, :uint64, @kinds.open),
      Wire.field(3, :string, method),
      Wire.field(4, :uint64, timeout_ms),
      Wire.delimited(5, request),
      Wire.field(6, :uint64, credit),
      Wire.map_field(7, metadata, &Wire.field(2, :string, &1))
    ]
  end

  @doc """
  A `CANCEL` frame for `call_id`; for `:deadline` its payload is a `google.rpc.Status` with code
  `DEADLINE_EXCEEDED` (4), so the worker ends the call as past its deadline rather than cancelled.
  """
  @spec cancel(pos_integer(), Krait.Channel.cancel_reason()) :: iodata()
  def cancel(call_id, reason \\ :cancelled)

  def cancel(call_id, :cancelled),
    do: [Wire.field(1, :uint64, call_id), Wire.field(2, :uint64, @kinds.cancel)]

  def cancel(call_id, :deadline),
    do: [cancel(call_id, :cancelled), Wire.delimited(5, Wire.field(1, :uint64, 4))]

  @doc "A `CREDIT` frame: `call_id` may send `bytes` more bytes of message payload."
  @spec credit(pos_integer(), pos_integer()) :: iodata()
  def credit(call_id, bytes) do
    [
      Wire.field(1, :uint64, call_id),
      Wire.field(2, :uint64, @kinds.credit),
      Wire.field(6, :uint64, bytes)
    ]
  end

  @doc "An `INPUT` frame: items of `call_id`'s input stream (`batch` is an encoded `krait.v1.InputBatch`)."
  @spec input(pos_integer(), iodata()) :: iodata()
  def input(call_id, batch) do
    [
      Wire.field(1, :uint64, call_id),
      Wire.field(2, :uint64, @kinds.input),
      Wire.delimited(5, batch)
    ]
  end

  @doc """
  An `INPUT_END` frame: `call_id`'s input has ended (`:ok`), or failed (`{:error, message}`: its payload
  is a `krait.v1.InputEnd` with code 2, UNKNOWN, and the message the tool's `InputError` carries).
  """
  @spec input_end(pos_integer(), :ok | {:error, String.t()}) :: iodata()
  def input_end(call_id, :ok),
    do: [Wire.field(1, :uint64, call_id), Wire.field(2, :uint64, @kinds.input_end)]

  def input_end(call_id, {:error, message}) do
    status = Krait.Proto.InputEnd.encode(%Krait.Proto.InputEnd{code: 2, message: message})
    [input_end(call_id, :ok), Wire.delimited(5, status)]
  end

  @doc "A `HANDLER_REPLY` frame: the answer to one of `call_id`'s handler calls (an encoded `krait.v1.HandlerReply`)."
  @spec handler_reply(pos_integer(), iodata()) :: iodata()
  def handler_reply(call_id, reply) do
    [
      Wire.field(1, :uint64, call_id),
      Wire.field(2, :uint64, @kinds.handler_reply),
      Wire.delimited(5, reply)
    ]
  end

  @doc """
  The input credit a worker's `CREDIT` frame grants: `{items, bytes}` (`credit_items` and `credit`).
  Read apart from `decode/1`, which keeps the hot path to the three fields every frame has.
  """
  @spec input_credit(binary()) :: {non_neg_integer(), non_neg_integer()}
  def input_credit(binary), do: input_credit(binary, 0, 0)

  defp input_credit(<<>>, items, bytes), do: {items, bytes}

  defp input_credit(binary, items, bytes) do
    case Wire.decode_field(binary) do
      {6, {:varint, v}, rest} -> input_credit(rest, items, v)
      {8, {:varint, v}, rest} -> input_credit(rest, v, bytes)
      {_, _, rest} -> input_credit(rest, items, bytes)
    end
  end

  @doc """
  Decodes a frame from a worker into `{kind, call_id, payload}`. Fields a worker does not send are
  skipped. Raises `Krait.Proto.DecodeError` on malformed input.
  """
  @spec decode(binary()) :: t()
  def decode(binary), do: fields(binary, 0, 0, "")

  @doc "The `metadata` map of a frame (only `READY` frames from a worker carry one)."
  @spec metadata(binary()) :: %{optional(String.t()) => String.t()}
  def metadata(binary), do: metadata(binary, %{})

  defp metadata(<<>>, acc), do: acc

  defp metadata(binary, acc) do
    case Wire.decode_field(binary) do
      {7, {:bytes, entry}, rest} ->
        {key, value} = Wire.map_entry(entry, &string_value/1, "")
        metadata(rest, Map.put(acc, key, value))

      {_, _, rest} ->
        metadata(rest, acc)
    end
  end

  defp string_value({:bytes, value}), do: value
  defp string_value(_), do: ""

  # JSON_CHUNKS whose first_seq is 0 (not written: protobuf's default)
  defp fields(<<>>, call_id, 13, payload), do: {:json_chunks, call_id, {0, payload}}

  defp fields(<<>>, call_id, kind, payload),
    do: {Map.get(@names, kind, {:unknown, kind}), call_id, payload}

  # call_id = 1, a one- or two-octet varint (the usual sizes)
  defp fields(<<0x08, 0::1, v::7, rest::binary>>, _id, kind, payload),
    do: fields(rest, v, kind, payload)

  defp fields(<<0x08, 1::1, lo::7, 0::1, hi::7, rest::binary>>, _id, kind, payload),
    do: fields(rest, hi <<< 7 ||| lo, kind, payload)

  # kind = 2
  defp fields(<<0x10, 0::1, v::7, rest::binary>>, id, _kind, payload),
    do: fields(rest, id, v, payload)

  defp fields(binary, id, kind, payload) do
    case Wire.decode_field(binary) do
      {1, {:varint, v}, rest} -> fields(rest, v, kind, payload)
      {2, {:varint, v}, rest} -> fields(rest, id, v, payload)
      {5, {:bytes, v}, rest} -> fields(rest, id, kind, v)
      {9, {:varint, v}, rest} -> seq_fields(rest, id, kind, payload, v)
      {_, _, rest} -> fields(rest, id, kind, payload)
    end
  end

  # after a `first_seq` (JSON_CHUNKS): once per batch of chunks, so no fast clauses
  defp seq_fields(<<>>, id, 13, payload, seq), do: {:json_chunks, id, {seq, payload}}
  defp seq_fields(<<>>, id, kind, payload, _seq), do: fields(<<>>, id, kind, payload)

  defp seq_fields(binary, id, kind, payload, seq) do
    case Wire.decode_field(binary) do
      {1, {:varint, v}, rest} -> seq_fields(rest, v, kind, payload, seq)
      {2, {:varint, v}, rest} -> seq_fields(rest, id, v, payload, seq)
      {5, {:bytes, v}, rest} -> seq_fields(rest, id, kind, v, seq)
      {9, {:varint, v}, rest} -> seq_fields(rest, id, kind, payload, v)
      {_, _, rest} -> seq_fields(rest, id, kind, payload, seq)
    end
  end
end
