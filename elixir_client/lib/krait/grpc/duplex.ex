defmodule Krait.GRPC.Duplex do
  @moduledoc """
  The messages of `ExecuteToolDuplex` (`krait.v1.DuplexRequest` / `DuplexResponse`), as
  `Krait.GRPC.Connection` sends and reads them.

  Only the outer `oneof` is written or read here: what it carries (the `ExecuteToolRequest`,
  an `InputBatch`, a `HandlerReply`; a `ToolChunkBatch`, an `ExecuteToolResponse`, a
  `HandlerCall`) is encoded and decoded by the caller, so the connection process never
  decodes tool output and large items cross it without a copy: requests become I/O vectors
  whose large binaries are the caller's own, responses sub-binaries of the received frames.
  """

  alias Krait.Proto.{DecodeError, Wire}

  # DuplexRequest fields
  @start 1
  @input 2
  @input_end 3
  @handler_reply 4

  # DuplexResponse fields
  @chunks 1
  @result 2
  @credit 3
  @handler_call 4

  # google.rpc.Code UNKNOWN: the caller's input failed.
  @unknown 2

  @typedoc "One decoded `DuplexResponse`."
  @type response ::
          {:output, binary}
          | {:credit, non_neg_integer, non_neg_integer}
          | {:handler_call, binary}
          | :empty

  @doc "The first message of a call: `DuplexRequest{start: request}`, gRPC-framed."
  @spec start(iodata) :: [binary]
  def start(request), do: framed(Wire.delimited(@start, request))

  @doc "`DuplexRequest{input: batch}` (`batch`: an encoded `InputBatch`), gRPC-framed."
  @spec input(iodata) :: [binary]
  def input(batch), do: framed(Wire.delimited(@input, batch))

  @doc """
  `DuplexRequest{input_end: InputEnd}`, gRPC-framed: code 0 when the input simply ended, code
  2 (UNKNOWN) with the caller's message when it failed.
  """
  @spec input_end(:ok | {:error, String.t()}) :: [binary]
  def input_end(:ok), do: framed(Wire.delimited(@input_end, []))

  def input_end({:error, message}) when is_binary(message) do
    body = [Wire.field(1, :int32, @unknown), Wire.field(2, :string, message)]
    framed(Wire.delimited(@input_end, body))
  end

  @doc "`DuplexRequest{handler_reply: reply}` (an encoded `HandlerReply`), gRPC-framed."
  @spec handler_reply(iodata) :: [binary]
  def handler_reply(reply), do: framed(Wire.delimited(@handler_reply, reply))

  # A gRPC message (uncompressed flag, 4-octet length, message) as a list of binaries: small
  # pieces are joined, large binaries of the caller's iodata are kept as they are.
  defp framed(message) do
    :erlang.iolist_to_iovec([<<0, IO.iodata_length(message)::32>> | message])
  end

  @doc """
  Reads one `DuplexResponse`: `{:output, payload}` for `chunks` (an encoded `ToolChunkBatch`)
  and `result` (an encoded `ExecuteToolResponse`), `{:credit, items, bytes}`, `{:handler_call,
  payload}` (an encoded `HandlerCall`), or `:empty` for a message with none of them (unknown
  fields are skipped; of several, the last wins, as protobuf merges a `oneof`). Payloads are
  sub-binaries of `message`.
  """
  @spec decode_response(binary) :: {:ok, response} | {:error, String.t()}
  def decode_response(message) when is_binary(message) do
    {:ok, fields(message, :empty)}
  rescue
    e in DecodeError -> {:error, "malformed DuplexResponse: #{Exception.message(e)}"}
  end

  defp fields(<<>>, kind), do: kind

  defp fields(bin, kind) do
    {num, raw, rest} = Wire.decode_field(bin)
    fields(rest, kind(num, raw, kind))
  end

  defp kind(num, {:bytes, payload}, _kind) when num in [@chunks, @result], do: {:output, payload}
  defp kind(@credit, {:bytes, payload}, _kind), do: credit(payload, 0, 0)
  defp kind(@handler_call, {:bytes, payload}, _kind), do: {:handler_call, payload}

  defp kind(num, _raw, _kind) when num in [@chunks, @result, @credit, @handler_call],
    do: raise(DecodeError, "field #{num} is not length-delimited")

  defp kind(_unknown, _raw, kind), do: kind

  # InputCredit{items = 1, bytes = 2}
  defp credit(<<>>, items, bytes), do: {:credit, items, bytes}

  defp credit(bin, items, bytes) do
    case Wire.decode_field(bin) do
      {1, raw, rest} -> credit(rest, uint(raw, items), bytes)
      {2, raw, rest} -> credit(rest, items, uint(raw, bytes))
      {_, _, rest} -> credit(rest, items, bytes)
    end
  end

  defp uint(raw, default) do
    case Wire.scalar(raw, :uint64) do
      :skip -> default
      value -> value
    end
  end
end
