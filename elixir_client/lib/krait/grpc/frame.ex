defmodule Krait.GRPC.Frame do
  @moduledoc """
  HTTP/2 frames (RFC 9113 section 6): encoding to iodata and decoding from a byte buffer.

  Hand-written because no HTTP/2 library is available here (Debian's cowlib 1.3 has no
  HTTP/2, hex.pm is unreachable). Frames are plain tuples; payloads stay sub-binaries of
  the buffer they were decoded from, so DATA is never copied here. Padding is stripped on
  decode (its length is kept, because padding counts against flow control), and the
  priority fields of HEADERS are skipped: priority is advisory and this client ignores it.

  Decoded frames:

    * `{:data, stream_id, data, end_stream?, flow_length}`: `flow_length` is the whole
      payload length, padding included, which is what flow control counts
    * `{:headers, stream_id, fragment, end_stream?, end_headers?}`
    * `{:continuation, stream_id, fragment, end_headers?}`
    * `{:settings, ack?, [{id, value}]}`
    * `{:ping, ack?, <<_::64>>}`
    * `{:goaway, last_stream_id, error_code, debug_data}`
    * `{:rst_stream, stream_id, error_code}`
    * `{:window_update, stream_id, increment}`
    * `{:priority, stream_id}`, `{:push_promise, stream_id}`, `{:unknown, type, stream_id}`
  """

  import Bitwise

  @data 0x0
  @headers 0x1
  @priority 0x2
  @rst_stream 0x3
  @settings 0x4
  @push_promise 0x5
  @ping 0x6
  @goaway 0x7
  @window_update 0x8
  @continuation 0x9

  @flag_end_stream 0x1
  @flag_ack 0x1
  @flag_end_headers 0x4
  @flag_padded 0x8
  @flag_priority 0x20

  @typedoc "A frame as this module encodes and decodes it (see the module doc)."
  @type t ::
          {:data, non_neg_integer, binary, boolean, non_neg_integer}
          | {:headers, non_neg_integer, iodata, boolean, boolean}
          | {:continuation, non_neg_integer, iodata, boolean}
          | {:settings, boolean, [{non_neg_integer, non_neg_integer}]}
          | {:ping, boolean, binary}
          | {:goaway, non_neg_integer, non_neg_integer, binary}
          | {:rst_stream, non_neg_integer, non_neg_integer}
          | {:window_update, non_neg_integer, pos_integer}
          | {:priority, non_neg_integer}
          | {:push_promise, non_neg_integer}
          | {:unknown, non_neg_integer, non_neg_integer}

  @typedoc "A connection-level protocol error: an HTTP/2 error code name and a reason."
  @type error :: {:frame_size_error | :protocol_error, term}

  @doc "The 24-octet client connection preface."
  @spec preface() :: binary
  def preface, do: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

  ## Encoding

  @doc """
  Encodes one frame. DATA may be given without its flow length
  (`{:data, stream_id, iodata, end_stream?}`); it is never padded.
  """
  @spec encode(t | {:data, non_neg_integer, iodata, boolean}) :: iodata
  def encode({:data, stream_id, data, end_stream?}),
    do: frame(@data, flag(end_stream?, @flag_end_stream), stream_id, data)

  def encode({:data, stream_id, data, end_stream?, _flow_length}),
    do: encode({:data, stream_id, data, end_stream?})

  def encode({:headers, stream_id, fragment, end_stream?, end_headers?}) do
    flags = flag(end_stream?, @flag_end_stream) ||| flag(end_headers?, @flag_end_headers)
    frame(@headers, flags, stream_id, fragment)
  end

  def encode({:continuation, stream_id, fragment, end_headers?}),
    do: frame(@continuation, flag(end_headers?, @flag_end_headers), stream_id, fragment)

  def encode({:settings, ack?, params}) do
    payload = for {id, value} <- params, do: <<id::16, value::32>>
    frame(@settings, flag(ack?, @flag_ack), 0, payload)
  end

  def encode({:ping, ack?, <<_::64>> = opaque}),
    do: frame(@ping, flag(ack?, @flag_ack), 0, opaque)

  def encode({:goaway, last_stream_id, error_code, debug}),
    do: frame(@goaway, 0, 0, [<<0::1, last_stream_id::31, error_code::32>>, debug])

  def encode({:rst_stream, stream_id, error_code}),
    do: frame(@rst_stream, 0, stream_id, <<error_code::32>>)

  def encode({:window_update, stream_id, increment}),
    do: frame(@window_update, 0, stream_id, <<0::1, increment::31>>)

  def encode({:priority, stream_id}),
    do: frame(@priority, 0, stream_id, <<0::1, 0::31, 15>>)

  defp frame(type, flags, stream_id, payload) do
    [<<IO.iodata_length(payload)::24, type::8, flags::8, 0::1, stream_id::31>>, payload]
  end

  defp flag(true, bit), do: bit
  defp flag(false, _bit), do: 0

  ## Decoding

  @doc """
  Decodes the first frame of `buffer`.

  Returns `{:ok, frame, rest}`; `{:more, total}` when the 9-octet header is there but the
  frame needs `total` octets in all; `:more` when not even the header is; or an error for
  a frame longer than `max_frame_size` or malformed.
  """
  @spec decode(binary, pos_integer) ::
          {:ok, t, binary} | {:more, pos_integer} | :more | {:error, error}
  def decode(<<length::24, _::binary>>, max_frame_size) when length > max_frame_size,
    do: {:error, {:frame_size_error, {:frame_too_large, length}}}

  def decode(
        <<length::24, type::8, flags::8, _::1, stream_id::31, payload::binary-size(length),
          rest::binary>>,
        _max_frame_size
      ) do
    case decode_payload(type, flags, stream_id, payload) do
      {:error, _} = error -> error
      frame -> {:ok, frame, rest}
    end
  end

  def decode(<<length::24, _::binary-size(6), _::binary>>, _max), do: {:more, length + 9}
  def decode(_buffer, _max), do: :more

  defp decode_payload(@data, _flags, 0, _payload),
    do: {:error, {:protocol_error, :data_on_stream_0}}

  defp decode_payload(@data, flags, stream_id, payload) do
    with {:ok, data} <- strip_padding(flags, payload) do
      {:data, stream_id, data, set?(flags, @flag_end_stream), byte_size(payload)}
    end
  end

  defp decode_payload(@headers, _flags, 0, _payload),
    do: {:error, {:protocol_error, :headers_on_stream_0}}

  defp decode_payload(@headers, flags, stream_id, payload) do
    with {:ok, fragment} <- strip_padding(flags, payload),
         {:ok, fragment} <- strip_priority(flags, fragment) do
      {:headers, stream_id, fragment, set?(flags, @flag_end_stream),
       set?(flags, @flag_end_headers)}
    end
  end

  defp decode_payload(@continuation, _flags, 0, _payload),
    do: {:error, {:protocol_error, :continuation_on_stream_0}}

  defp decode_payload(@continuation, flags, stream_id, payload),
    do: {:continuation, stream_id, payload, set?(flags, @flag_end_headers)}

  defp decode_payload(@priority, _flags, stream_id, <<_::binary-size(5)>>),
    do: {:priority, stream_id}

  defp decode_payload(@priority, _flags, _stream_id, _payload),
    do: {:error, {:frame_size_error, :priority}}

  defp decode_payload(@rst_stream, _flags, 0, _payload),
    do: {:error, {:protocol_error, :rst_stream_on_stream_0}}

  defp decode_payload(@rst_stream, _flags, stream_id, <<code::32>>),
    do: {:rst_stream, stream_id, code}

  defp decode_payload(@rst_stream, _flags, _stream_id, _payload),
    do: {:error, {:frame_size_error, :rst_stream}}

  defp decode_payload(@settings, _flags, stream_id, _payload) when stream_id != 0,
    do: {:error, {:protocol_error, :settings_on_stream}}

  defp decode_payload(@settings, flags, 0, payload) do
    cond do
      set?(flags, @flag_ack) and payload != <<>> -> {:error, {:frame_size_error, :settings_ack}}
      rem(byte_size(payload), 6) != 0 -> {:error, {:frame_size_error, :settings}}
      true -> {:settings, set?(flags, @flag_ack), for(<<id::16, v::32 <- payload>>, do: {id, v})}
    end
  end

  defp decode_payload(@push_promise, _flags, stream_id, _payload), do: {:push_promise, stream_id}

  defp decode_payload(@ping, _flags, stream_id, _payload) when stream_id != 0,
    do: {:error, {:protocol_error, :ping_on_stream}}

  defp decode_payload(@ping, flags, 0, <<opaque::binary-size(8)>>),
    do: {:ping, set?(flags, @flag_ack), opaque}

  defp decode_payload(@ping, _flags, 0, _payload), do: {:error, {:frame_size_error, :ping}}

  defp decode_payload(@goaway, _flags, 0, <<_::1, last::31, code::32, debug::binary>>),
    do: {:goaway, last, code, debug}

  defp decode_payload(@goaway, _flags, _stream_id, _payload),
    do: {:error, {:protocol_error, :goaway}}

  defp decode_payload(@window_update, _flags, stream_id, <<_::1, increment::31>>) do
    if increment == 0,
      do: {:error, {:protocol_error, {:zero_window_update, stream_id}}},
      else: {:window_update, stream_id, increment}
  end

  defp decode_payload(@window_update, _flags, _stream_id, _payload),
    do: {:error, {:frame_size_error, :window_update}}

  # Unknown frame types must be ignored (RFC 9113 4.1).
  defp decode_payload(type, _flags, stream_id, _payload), do: {:unknown, type, stream_id}

  defp strip_padding(flags, payload) do
    if set?(flags, @flag_padded) do
      case payload do
        <<pad, rest::binary>> when pad <= byte_size(rest) ->
          {:ok, binary_part(rest, 0, byte_size(rest) - pad)}

        _ ->
          {:error, {:protocol_error, :bad_padding}}
      end
    else
      {:ok, payload}
    end
  end

  defp strip_priority(flags, fragment) do
    cond do
      not set?(flags, @flag_priority) -> {:ok, fragment}
      byte_size(fragment) >= 5 -> {:ok, binary_part(fragment, 5, byte_size(fragment) - 5)}
      true -> {:error, {:frame_size_error, :headers_priority}}
    end
  end

  defp set?(flags, bit), do: (flags &&& bit) != 0
end
