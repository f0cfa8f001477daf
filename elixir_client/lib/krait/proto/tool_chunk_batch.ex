defmodule Krait.Proto.ToolChunkBatch do
  @moduledoc """
  `krait.v1.ToolChunkBatch`: many chunks in one message, in order (the
  `ExecuteStreamingToolBatched` RPC). Decoding is the hot path of a fast stream: chunk
  lengths of one or two octets are matched in the clause head, the chunk bytes are
  sub-binaries of the input, and `Krait.Proto.ToolChunk.decode/1` does the rest.
  """

  import Bitwise

  alias Krait.Proto.{ToolChunk, Wire}

  defstruct chunks: []

  @type t :: %__MODULE__{chunks: [ToolChunk.t()]}

  @doc "Encodes the batch to iodata (proto3 wire format)."
  @spec encode(t) :: iodata
  def encode(%__MODULE__{chunks: chunks}),
    do: for(chunk <- chunks, do: Wire.delimited(1, ToolChunk.encode(chunk)))

  @doc """
  Decodes a batch. Raises `Krait.Proto.DecodeError` on malformed input; unknown fields
  are skipped.
  """
  @spec decode(binary) :: t
  def decode(binary) when is_binary(binary), do: %__MODULE__{chunks: decode_chunks(binary)}

  @doc "Decodes a batch straight to its list of chunks, without the wrapping struct."
  @spec decode_chunks(binary) :: [ToolChunk.t()]
  def decode_chunks(binary) when is_binary(binary), do: chunks(binary, [])

  defp chunks(<<>>, acc), do: :lists.reverse(acc)

  defp chunks(<<0x0A, 0::1, n::7, chunk::binary-size(n), rest::binary>>, acc),
    do: chunks(rest, [ToolChunk.decode(chunk) | acc])

  defp chunks(<<0x0A, 1::1, lo::7, 0::1, hi::7, rest::binary>>, acc)
       when byte_size(rest) >= (hi <<< 7 ||| lo) do
    <<chunk::binary-size(hi <<< 7 ||| lo), rest::binary>> = rest
    chunks(rest, [ToolChunk.decode(chunk) | acc])
  end

  defp chunks(binary, acc) do
    case Wire.decode_field(binary) do
      {1, {:bytes, chunk}, rest} -> chunks(rest, [ToolChunk.decode(chunk) | acc])
      {_, _, rest} -> chunks(rest, acc)
    end
  end
end
