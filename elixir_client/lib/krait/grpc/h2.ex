defmodule Krait.GRPC.H2 do
  @moduledoc """
  The HTTP/2 client side of a `Krait.GRPC.Connection` as plain data: settings, flow-control
  windows (connection and per stream), the HPACK contexts, the streams table and GOAWAY.
  No socket, no process: every function takes the state and bytes received or a caller's
  request, and returns the new state and the actions that carry it out, in order:

    * `{:send, pid, message}`: a message for a call's owner (`{:krait_stream, ref, ...}`);
    * `{:reply, from, reply}`: the answer to a waiting unary caller;
    * `{:demonitor, monitor}` and `{:cancel_timer, timer}`: a closed call's monitor and deadline;
    * `{:write, iodata}`: the frames to write, all of one event in a single write, last.

  The process (`Krait.GRPC.Connection`) owns the socket, the monitors and the timers: it
  creates a call's ref, monitor and deadline timer before `open/2`, and performs the actions.
  `socket` and `transport` are stored here for it and never read by this module.
  """

  alias Krait.GRPC.{Duplex, Error, Frame, HPACK, MessageBuffer, Metadata, Stream}

  # SETTINGS identifiers (RFC 9113 6.5.2).
  @header_table_size 0x1
  @enable_push 0x2
  @max_concurrent_streams 0x3
  @initial_window_size 0x4
  @max_frame_size 0x5

  # Error codes (RFC 9113 7).
  @no_error 0x0
  @protocol_error 0x1
  @flow_control_error 0x3
  @frame_size_error 0x6
  @cancel 0x8
  @compression_error 0x9

  @default_window 65_535
  @max_window 2_147_483_647
  @max_stream_id 2_147_483_647
  @our_header_table_size 4096
  @user_agent "grpc-elixir-krait/0.1.0"

  defstruct [
    :socket,
    :authority,
    transport: :gen_tcp,
    scheme: "http",
    headers: [],
    buffer: <<>>,
    encoder: nil,
    decoder: nil,
    next_id: 1,
    streams: %{},
    refs: %{},
    monitors: %{},
    continuation: nil,
    peer_max_frame_size: 16_384,
    peer_initial_window: @default_window,
    peer_max_streams: :infinity,
    send_window: @default_window,
    recv_window: @default_window,
    recv_unreturned: 0,
    window_size: 4_194_304,
    connection_window_size: 16_777_216,
    max_frame_size: 16_384,
    goaway: nil,
    out: [],
    acts: []
  ]

  @typedoc "An action for the process owning the connection (see the module doc)."
  @type action ::
          {:send, pid, term}
          | {:reply, GenServer.from(), term}
          | {:demonitor, reference}
          | {:cancel_timer, reference}
          | {:write, iodata}

  @typedoc """
  `headers` are sent on every call (the token's `authorization`); `buffer` holds bytes of an
  incomplete frame; `continuation` an open header block; `peer_*` the server's settings;
  `send_window`/`recv_window` the connection windows, `recv_unreturned` bytes received and
  not yet handed back; `window_size`, `connection_window_size` and `max_frame_size` our own
  settings; `goaway` the server's GOAWAY once received (the connection is draining);
  `out` (encoded frames) and `acts` (actions) accumulate, reversed, during one event.
  """
  @type t :: %__MODULE__{
          socket: term,
          authority: String.t() | nil,
          transport: module,
          scheme: String.t(),
          headers: [HPACK.header()],
          buffer: binary | {:partial, pos_integer, [binary], non_neg_integer},
          encoder: HPACK.t() | nil,
          decoder: HPACK.t() | nil,
          next_id: pos_integer,
          streams: %{optional(pos_integer) => Stream.t()},
          refs: %{optional(reference) => pos_integer},
          monitors: %{optional(reference) => pos_integer},
          continuation: nil | {pos_integer, boolean, [binary]},
          peer_max_frame_size: pos_integer,
          peer_initial_window: non_neg_integer,
          peer_max_streams: non_neg_integer | :infinity,
          send_window: integer,
          recv_window: integer,
          recv_unreturned: non_neg_integer,
          window_size: pos_integer,
          connection_window_size: pos_integer,
          max_frame_size: pos_integer,
          goaway: nil | {non_neg_integer, non_neg_integer, binary},
          out: [iodata],
          acts: [action]
        }

  @typedoc """
  A call to open: its `ref`, owner `monitor` and deadline `timer` (made by the process),
  `from` for a unary caller, the encoded (framed) request `body`, `timeout` in ms (sent as
  `grpc-timeout`) and encoded `metadata`.
  """
  @type call :: %{
          ref: reference,
          kind: :unary | :stream,
          path: String.t(),
          body: iodata,
          timeout: non_neg_integer | nil,
          metadata: [{String.t(), binary}],
          owner: pid,
          input_owner: pid,
          duplex: boolean,
          monitor: reference,
          timer: reference | nil,
          from: GenServer.from() | nil
        }

  @typedoc "The result of an event: the new state and the actions to perform, in order."
  @type result :: {t, [action]}

  ## Setup

  @doc """
  A new connection state. Options: `authority:`, `scheme:` (`"http"` or `"https"`),
  `metadata:` (headers sent on every call; `authorization` is never indexed),
  `initial_window_size:`, `connection_window_size:`, `max_frame_size:`, and `socket:` and
  `transport:` (kept for the process).
  """
  @spec new(keyword) :: t
  def new(opts) do
    connection_window = opts[:connection_window_size] || 16_777_216

    %__MODULE__{
      socket: opts[:socket],
      transport: opts[:transport] || :gen_tcp,
      scheme: opts[:scheme] || "http",
      authority: opts[:authority],
      headers: call_headers(opts[:metadata] || %{}),
      encoder: HPACK.new(@our_header_table_size),
      decoder: HPACK.new(@our_header_table_size),
      window_size: opts[:initial_window_size] || 4_194_304,
      connection_window_size: connection_window,
      max_frame_size: opts[:max_frame_size] || 16_384,
      recv_window: max(connection_window, @default_window)
    }
  end

  @doc """
  What the client writes first: the preface, our SETTINGS and, in the same write, the
  WINDOW_UPDATE raising the connection window from the default 65535.
  """
  @spec preface(t) :: iodata
  def preface(%__MODULE__{} = h2) do
    settings =
      Frame.encode(
        {:settings, false,
         [
           {@enable_push, 0},
           {@initial_window_size, h2.window_size},
           {@max_frame_size, h2.max_frame_size}
         ]}
      )

    raise_by = h2.connection_window_size - @default_window
    window_update = if raise_by > 0, do: Frame.encode({:window_update, 0, raise_by}), else: []
    [Frame.preface(), settings, window_update]
  end

  defp call_headers(metadata) do
    Enum.map(metadata, fn
      {"authorization" = k, v} -> {k, v, :never_store}
      {k, v} -> {to_string(k), v}
    end)
  end

  ## Opening calls

  @doc """
  Why a new call cannot be opened now (an unprocessed `UNAVAILABLE`), or `nil` if it can:
  after a GOAWAY, once stream ids are exhausted, or at the server's concurrent stream limit.
  """
  @spec refusal(t) :: Error.t() | nil
  def refusal(%__MODULE__{} = h2) do
    cond do
      h2.goaway != nil ->
        Error.unprocessed("connection is going away (GOAWAY received)")

      h2.next_id > @max_stream_id ->
        Error.unprocessed("stream ids exhausted on this connection")

      h2.peer_max_streams != :infinity and map_size(h2.streams) >= h2.peer_max_streams ->
        Error.unprocessed("server's concurrent stream limit reached")

      true ->
        nil
    end
  end

  @doc """
  Opens a call (check `refusal/1` first): its headers, and as much of its request as the
  windows allow.
  """
  @spec open(t, call) :: result
  def open(%__MODULE__{} = h2, call) do
    id = h2.next_id

    headers =
      [
        {":method", "POST"},
        {":scheme", h2.scheme},
        {":path", call.path},
        {":authority", h2.authority},
        {"content-type", "application/grpc"},
        {"te", "trailers"},
        {"user-agent", @user_agent}
      ] ++
        timeout_header(call.timeout) ++
        h2.headers ++
        Enum.map(call.metadata, fn {k, v} ->
          if byte_size(v) > 256, do: {k, v, :no_store}, else: {k, v}
        end)

    {block, encoder} = HPACK.encode(headers, h2.encoder)
    h2 = %{h2 | encoder: encoder, next_id: id + 2}
    h2 = emit_headers(h2, id, IO.iodata_to_binary(block))

    stream =
      Stream.new(
        id: id,
        ref: call.ref,
        kind: call.kind,
        owner: call.owner,
        input_owner: call.input_owner,
        duplex: call.duplex,
        monitor: call.monitor,
        from: if(call.kind == :unary, do: call.from),
        timer: call.timer,
        window: h2.window_size,
        recv_window: h2.window_size,
        send_window: h2.peer_initial_window
      )
      |> Stream.enqueue(call.body)

    h2 = %{
      h2
      | streams: Map.put(h2.streams, id, stream),
        refs: Map.put(h2.refs, call.ref, id),
        monitors: Map.put(h2.monitors, call.monitor, id)
    }

    take(send_pending(h2, id))
  end

  defp timeout_header(nil), do: []

  defp timeout_header(timeout),
    do: [{"grpc-timeout", Metadata.encode_timeout(timeout), :no_store}]

  # A header block larger than the server's frame size continues in CONTINUATION frames.
  defp emit_headers(h2, id, block) do
    max = h2.peer_max_frame_size

    if byte_size(block) <= max do
      emit(h2, {:headers, id, block, false, true})
    else
      <<first::binary-size(max), rest::binary>> = block
      emit_continuations(emit(h2, {:headers, id, first, false, false}), id, rest, max)
    end
  end

  defp emit_continuations(h2, id, block, max) when byte_size(block) <= max,
    do: emit(h2, {:continuation, id, block, true})

  defp emit_continuations(h2, id, block, max) do
    <<part::binary-size(max), rest::binary>> = block
    emit_continuations(emit(h2, {:continuation, id, part, false}), id, rest, max)
  end

  ## Callers' events

  @doc "The owner of `ref` consumed `bytes` of its messages: the server may send that much more."
  @spec ack(t, reference, non_neg_integer) :: result
  def ack(%__MODULE__{} = h2, ref, bytes) do
    case lookup_ref(h2, ref) do
      nil -> {h2, []}
      stream -> take(window_update(h2, Stream.ack(stream, bytes)))
    end
  end

  @doc """
  Queues a message of a duplex call's request side (input, end of input, handler reply) and
  sends what the windows allow. Ignored when the call is over or is not a duplex call.
  """
  @spec send_request(t, reference, iodata) :: result
  def send_request(%__MODULE__{} = h2, ref, parts) do
    case lookup_ref(h2, ref) do
      %Stream{duplex: true} = stream ->
        stream = Stream.enqueue(stream, parts)
        take(send_pending(%{h2 | streams: Map.put(h2.streams, stream.id, stream)}, stream.id))

      _ ->
        {h2, []}
    end
  end

  @doc "Cancels the call `ref` (RST_STREAM(CANCEL)); nobody is told."
  @spec cancel(t, reference) :: result
  def cancel(%__MODULE__{} = h2, ref) do
    case lookup_ref(h2, ref) do
      nil -> {h2, []}
      stream -> take(close_stream(h2, stream, :silent, @cancel))
    end
  end

  @doc "The owner monitored by `monitor` went down: its call is cancelled, silently."
  @spec owner_down(t, reference) :: result
  def owner_down(%__MODULE__{} = h2, monitor) do
    case Map.fetch(h2.monitors, monitor) do
      {:ok, id} -> take(close_stream(h2, Map.fetch!(h2.streams, id), :silent, @cancel))
      :error -> {h2, []}
    end
  end

  @doc "The local deadline of `ref` passed: the call fails with `DEADLINE_EXCEEDED` and is reset."
  @spec deadline(t, reference) :: result
  def deadline(%__MODULE__{} = h2, ref) do
    case lookup_ref(h2, ref) do
      nil -> {h2, []}
      stream -> take(close_stream(h2, stream, {:error, Error.deadline_exceeded()}, @cancel))
    end
  end

  @doc """
  Every open call fails with `error`; those that had no response headers yet never started
  on a Krait worker (it answers headers before running a tool), so they are marked
  unprocessed. Used when the socket is lost.
  """
  @spec fail_all(t, Error.t()) :: result
  def fail_all(%__MODULE__{} = h2, %Error{} = error), do: take(fail_streams(h2, error))

  @doc "Closes gracefully: fails open calls with `UNAVAILABLE` and writes GOAWAY(NO_ERROR)."
  @spec close(t) :: result
  def close(%__MODULE__{} = h2) do
    h2 = emit(h2, {:goaway, 0, @no_error, "closing"})
    take(fail_streams(h2, Error.unavailable("connection closed by the client")))
  end

  @doc "Whether a GOAWAY was received: the connection only finishes the calls it has."
  @spec draining?(t) :: boolean
  def draining?(%__MODULE__{goaway: goaway}), do: goaway != nil

  @doc "Whether the connection drained: a GOAWAY was received and no call is left."
  @spec drained?(t) :: boolean
  def drained?(%__MODULE__{goaway: goaway, streams: streams}),
    do: goaway != nil and map_size(streams) == 0

  @doc "The stream of `ref`, if the call is open."
  @spec lookup_ref(t, reference) :: Stream.t() | nil
  def lookup_ref(%__MODULE__{} = h2, ref) do
    case Map.fetch(h2.refs, ref) do
      {:ok, id} -> Map.get(h2.streams, id)
      :error -> nil
    end
  end

  ## Receiving

  @doc """
  Handles bytes received from the server. On a connection error (the server broke the
  protocol) the actions write GOAWAY and fail every call with `UNAVAILABLE`; the connection
  is then over.
  """
  @spec receive_bytes(t, binary) :: {:ok, t, [action]} | {:error, term, t, [action]}
  def receive_bytes(%__MODULE__{} = h2, data) do
    case buffer_bytes(h2, data) do
      {:ok, h2} ->
        {h2, actions} = take(h2)
        {:ok, h2, actions}

      {:error, code, reason, h2} ->
        h2 = emit(h2, {:goaway, 0, code, inspect(reason)})
        # The frames so far and GOAWAY are written before the calls are failed.
        {h2, written} = take(h2)
        error = Error.unavailable("HTTP/2 protocol error: #{inspect(reason)}")
        {h2, failed} = take(fail_streams(h2, error))
        {:error, reason, h2, written ++ failed}
    end
  end

  defp buffer_bytes(h2, data) do
    case h2.buffer do
      {:partial, total, parts, size} when size + byte_size(data) < total ->
        {:ok, %{h2 | buffer: {:partial, total, [data | parts], size + byte_size(data)}}}

      {:partial, total, parts, size} ->
        # The frame is complete: join its pieces once, copying no more than the frame; the
        # rest of `data` is decoded in place.
        <<tail::binary-size(total - size), rest::binary>> = data
        frame = IO.iodata_to_binary(Enum.reverse(parts, [tail]))

        with {:ok, h2} <- decode_frames(%{h2 | buffer: <<>>}, frame) do
          decode_frames(h2, rest)
        end

      <<>> ->
        decode_frames(h2, data)

      buffer ->
        decode_frames(%{h2 | buffer: <<>>}, buffer <> data)
    end
  end

  defp decode_frames(h2, bytes) do
    case Frame.decode(bytes, h2.max_frame_size) do
      {:ok, frame, rest} ->
        case handle_frame(h2, frame) do
          {:ok, h2} -> decode_frames(h2, rest)
          {:error, _code, _reason, _h2} = error -> error
        end

      {:more, total} ->
        {:ok, %{h2 | buffer: {:partial, total, [bytes], byte_size(bytes)}}}

      :more ->
        {:ok, %{h2 | buffer: bytes}}

      {:error, {:frame_size_error, reason}} ->
        {:error, @frame_size_error, reason, h2}

      {:error, {:protocol_error, reason}} ->
        {:error, @protocol_error, reason, h2}
    end
  end

  # While a header block is open only its CONTINUATION frames may arrive (RFC 9113 6.10).
  defp handle_frame(%{continuation: {id, end_stream?, fragments}} = h2, frame) do
    case frame do
      {:continuation, ^id, fragment, false} ->
        {:ok, %{h2 | continuation: {id, end_stream?, [fragment | fragments]}}}

      {:continuation, ^id, fragment, true} ->
        block = IO.iodata_to_binary(Enum.reverse(fragments, [fragment]))
        handle_header_block(%{h2 | continuation: nil}, id, block, end_stream?)

      _ ->
        {:error, @protocol_error, :expected_continuation, h2}
    end
  end

  defp handle_frame(h2, {:data, id, data, end_stream?, flow_length}) do
    with {:ok, h2} <- account_connection_window(h2, flow_length) do
      case Map.fetch(h2.streams, id) do
        {:ok, stream} -> {:ok, receive_data(h2, stream, data, end_stream?, flow_length)}
        # A stream we already closed (cancelled, timed out): drop its data.
        :error -> {:ok, h2}
      end
    end
  end

  defp handle_frame(h2, {:headers, id, fragment, end_stream?, true}),
    do: handle_header_block(h2, id, fragment, end_stream?)

  defp handle_frame(h2, {:headers, id, fragment, end_stream?, false}),
    do: {:ok, %{h2 | continuation: {id, end_stream?, [fragment]}}}

  defp handle_frame(h2, {:continuation, _id, _fragment, _end_headers?}),
    do: {:error, @protocol_error, :unexpected_continuation, h2}

  defp handle_frame(h2, {:settings, false, params}) do
    with {:ok, h2} <- apply_settings(h2, params) do
      {:ok, emit(h2, {:settings, true, []}) |> send_all_pending()}
    end
  end

  defp handle_frame(h2, {:settings, true, _params}), do: {:ok, h2}
  defp handle_frame(h2, {:ping, false, opaque}), do: {:ok, emit(h2, {:ping, true, opaque})}
  defp handle_frame(h2, {:ping, true, _opaque}), do: {:ok, h2}

  # Calls above the last stream id the server will process fail unprocessed (safe to retry);
  # the others finish.
  defp handle_frame(h2, {:goaway, last_id, code, debug}) do
    message = "connection going away (GOAWAY code #{code}#{if debug != "", do: ": " <> debug})"

    h2 =
      h2.streams
      |> Map.values()
      |> Enum.filter(&(&1.id > last_id))
      |> Enum.reduce(%{h2 | goaway: {last_id, code, debug}}, fn stream, h2 ->
        close_stream(h2, stream, {:error, Error.unprocessed(message)}, nil)
      end)

    {:ok, h2}
  end

  defp handle_frame(h2, {:rst_stream, id, code}) do
    case Map.fetch(h2.streams, id) do
      {:ok, stream} ->
        {:ok, close_stream(h2, stream, {:error, Metadata.from_rst_stream(code)}, nil)}

      :error ->
        {:ok, h2}
    end
  end

  defp handle_frame(h2, {:window_update, 0, increment}) do
    window = h2.send_window + increment

    if window > @max_window,
      do: {:error, @flow_control_error, :connection_window_overflow, h2},
      else: {:ok, send_all_pending(%{h2 | send_window: window})}
  end

  defp handle_frame(h2, {:window_update, id, increment}) do
    case Map.fetch(h2.streams, id) do
      {:ok, stream} ->
        stream = %{stream | send_window: stream.send_window + increment}
        {:ok, send_pending(%{h2 | streams: Map.put(h2.streams, id, stream)}, id)}

      :error ->
        {:ok, h2}
    end
  end

  defp handle_frame(h2, {:push_promise, _id}),
    do: {:error, @protocol_error, :push_promise_while_disabled, h2}

  # PRIORITY is advisory and unknown frame types are ignored (RFC 9113 5.3, 4.1).
  defp handle_frame(h2, {:priority, _id}), do: {:ok, h2}
  defp handle_frame(h2, {:unknown, _type, _id}), do: {:ok, h2}

  defp account_connection_window(h2, flow_length) do
    recv_window = h2.recv_window - flow_length
    unreturned = h2.recv_unreturned + flow_length

    cond do
      recv_window < 0 ->
        {:error, @flow_control_error, :connection_window_exceeded, h2}

      # The connection window is refilled eagerly; streams bound memory.
      unreturned >= div(h2.connection_window_size, 4) ->
        h2 = emit(h2, {:window_update, 0, unreturned})
        {:ok, %{h2 | recv_window: recv_window + unreturned, recv_unreturned: 0}}

      true ->
        {:ok, %{h2 | recv_window: recv_window, recv_unreturned: unreturned}}
    end
  end

  defp receive_data(h2, stream, data, end_stream?, flow_length) do
    case Stream.receive_data(stream, data, flow_length) do
      {:ok, messages, bytes, stream} ->
        case deliver_messages(h2, stream, messages, bytes) do
          {:ok, h2, stream} when end_stream? ->
            error = Error.internal("server ended the stream without trailers")
            close_stream(h2, stream, {:error, error}, end_request(stream))

          {:ok, h2, stream} ->
            window_update(h2, stream)

          {:error, h2, message} ->
            close_stream(h2, stream, {:error, Error.internal(message)}, @cancel)
        end

      {:error, :flow_control} ->
        error = Error.internal("server exceeded the stream's flow-control window")
        close_stream(h2, stream, {:error, error}, @flow_control_error)

      {:error, :compressed_message} ->
        error = Error.internal("server sent a compressed message; no compression was offered")
        close_stream(h2, stream, {:error, error}, @cancel)
    end
  end

  defp deliver_messages(h2, %Stream{kind: :stream, duplex: false} = stream, messages, bytes) do
    h2 =
      if messages != [],
        do:
          act(
            h2,
            {:send, stream.owner, {:krait_stream, stream.ref, {:messages, messages, bytes}}}
          ),
        else: h2

    {:ok, h2, stream}
  end

  defp deliver_messages(h2, %Stream{duplex: true} = stream, messages, _bytes),
    do: route_duplex(h2, stream, messages, [], 0, 0)

  defp deliver_messages(h2, stream, _messages, _bytes), do: {:ok, h2, stream}

  # Tool output goes to the owner in `:messages` deliveries (consecutive ones together, order
  # kept); credit and handler calls are sent on their own and acknowledged here at once.
  defp route_duplex(h2, stream, [], output, output_bytes, own_bytes) do
    h2 = flush_output(h2, stream, output, output_bytes)
    {:ok, h2, Stream.ack(stream, own_bytes)}
  end

  defp route_duplex(h2, stream, [message | messages], output, output_bytes, own_bytes) do
    size = byte_size(message) + 5

    case Duplex.decode_response(message) do
      {:ok, {:output, payload}} ->
        route_duplex(h2, stream, messages, [payload | output], output_bytes + size, own_bytes)

      {:ok, control} ->
        h2 = h2 |> flush_output(stream, output, output_bytes) |> send_control(stream, control)
        route_duplex(h2, stream, messages, [], 0, own_bytes + size)

      {:error, reason} ->
        {:error, flush_output(h2, stream, output, output_bytes), reason}
    end
  end

  defp flush_output(h2, _stream, [], _bytes), do: h2

  defp flush_output(h2, stream, output, bytes) do
    message = {:krait_stream, stream.ref, {:messages, Enum.reverse(output), bytes}}
    act(h2, {:send, stream.owner, message})
  end

  defp send_control(h2, stream, {:credit, items, bytes}),
    do: act(h2, {:send, stream.input_owner, {:krait_stream, stream.ref, {:credit, items, bytes}}})

  defp send_control(h2, stream, {:handler_call, payload}),
    do: act(h2, {:send, stream.owner, {:krait_stream, stream.ref, {:handler_call, payload}}})

  defp send_control(h2, _stream, :empty), do: h2

  defp window_update(h2, stream) do
    {increment, stream} = Stream.take_window_update(stream)
    h2 = %{h2 | streams: Map.put(h2.streams, stream.id, stream)}
    if increment > 0, do: emit(h2, {:window_update, stream.id, increment}), else: h2
  end

  # The block must be decoded even for a stream already closed: HPACK state is shared.
  defp handle_header_block(h2, id, block, end_stream?) do
    case HPACK.decode(block, h2.decoder) do
      {:ok, headers, decoder} ->
        h2 = %{h2 | decoder: decoder}

        case Map.fetch(h2.streams, id) do
          {:ok, stream} -> {:ok, handle_headers(h2, stream, headers, end_stream?)}
          :error -> {:ok, h2}
        end

      {:error, reason} ->
        {:error, @compression_error, {:hpack, reason}, h2}
    end
  end

  # Response headers; with END_STREAM this is a Trailers-Only response.
  defp handle_headers(h2, %Stream{headers: nil} = stream, headers, end_stream?) do
    http_status = http_status(headers)

    cond do
      end_stream? ->
        outcome = Metadata.status_from_trailers(headers, http_status)
        close_stream(h2, stream, outcome, end_request(stream))

      http_status != 200 ->
        error = Metadata.from_http_status(http_status || 0)
        close_stream(h2, stream, {:error, error}, @cancel)

      not grpc_content_type?(headers) ->
        error = Error.internal("response content-type is not application/grpc")
        close_stream(h2, stream, {:error, error}, @cancel)

      true ->
        stream = %{stream | headers: headers, http_status: http_status}
        %{h2 | streams: Map.put(h2.streams, stream.id, stream)}
    end
  end

  # Trailers.
  defp handle_headers(h2, stream, trailers, true) do
    outcome =
      case Metadata.status_from_trailers(trailers, stream.http_status) do
        :ok ->
          if MessageBuffer.empty?(stream.buffer),
            do: :ok,
            else: {:error, Error.internal("stream ended in the middle of a message")}

        error ->
          error
      end

    close_stream(h2, stream, outcome, end_request(stream))
  end

  defp handle_headers(h2, stream, _headers, false) do
    error = Error.internal("server sent a second header block without END_STREAM")
    close_stream(h2, stream, {:error, error}, @protocol_error)
  end

  defp http_status(headers) do
    with {_, value} <- List.keyfind(headers, ":status", 0),
         {status, ""} <- Integer.parse(value) do
      status
    else
      _ -> nil
    end
  end

  defp grpc_content_type?(headers) do
    case List.keyfind(headers, "content-type", 0) do
      {_, "application/grpc" <> _} -> true
      nil -> true
      _ -> false
    end
  end

  defp apply_settings(h2, params) do
    Enum.reduce_while(params, {:ok, h2}, fn {id, value}, {:ok, h2} ->
      case apply_setting(h2, id, value) do
        {:ok, h2} -> {:cont, {:ok, h2}}
        error -> {:halt, error}
      end
    end)
  end

  defp apply_setting(h2, @header_table_size, value) do
    size = min(value, @our_header_table_size)

    if size == h2.encoder.max_size,
      do: {:ok, h2},
      else: {:ok, %{h2 | encoder: HPACK.resize_encoder(h2.encoder, size)}}
  end

  defp apply_setting(h2, @max_concurrent_streams, value),
    do: {:ok, %{h2 | peer_max_streams: value}}

  defp apply_setting(h2, @initial_window_size, value) when value > @max_window,
    do: {:error, @flow_control_error, :initial_window_too_large, h2}

  # A new initial window shifts every open stream's window by the difference (6.9.2).
  defp apply_setting(h2, @initial_window_size, value) do
    delta = value - h2.peer_initial_window

    streams =
      Map.new(h2.streams, fn {id, s} -> {id, %{s | send_window: s.send_window + delta}} end)

    {:ok, %{h2 | peer_initial_window: value, streams: streams}}
  end

  defp apply_setting(h2, @max_frame_size, value) when value in 16_384..16_777_215,
    do: {:ok, %{h2 | peer_max_frame_size: value}}

  defp apply_setting(h2, @max_frame_size, _value),
    do: {:error, @protocol_error, :bad_max_frame_size, h2}

  defp apply_setting(h2, _id, _value), do: {:ok, h2}

  ## Sending

  # Sends as much of a stream's queued request as both windows allow. A plain call's request
  # ends with its last bytes; a duplex call's stays open.
  defp send_pending(h2, id) do
    case Map.fetch(h2.streams, id) do
      {:ok, %Stream{send_size: size} = stream} when size > 0 ->
        allowed = min(h2.send_window, stream.send_window) |> min(h2.peer_max_frame_size)

        if allowed > 0 do
          {data, taken, stream} = Stream.take_send(stream, allowed)
          stream = %{stream | send_window: stream.send_window - taken}

          h2 = %{
            emit(h2, {:data, id, data, stream.send_size == 0 and not stream.duplex})
            | send_window: h2.send_window - taken,
              streams: Map.put(h2.streams, id, stream)
          }

          send_pending(h2, id)
        else
          h2
        end

      _ ->
        h2
    end
  end

  defp send_all_pending(h2) do
    h2.streams
    |> Map.keys()
    |> Enum.sort()
    |> Enum.reduce(h2, &send_pending(&2, &1))
  end

  ## Closing streams

  # What ends our side once the response has ended: nothing when the request was sent whole,
  # RST_STREAM(CANCEL) when some of it is still queued, an empty END_STREAM for a duplex call
  # whose request side is open (the server may have reset it already: that is harmless).
  defp end_request(%Stream{send_size: size}) when size > 0, do: @cancel
  defp end_request(%Stream{duplex: true}), do: :half_close
  defp end_request(_stream), do: nil

  # Removes a stream, optionally resetting (or half-closing) it, and tells its caller or owner
  # the outcome (`:silent` tells nobody: cancel and owner death).
  defp close_stream(h2, stream, outcome, rst) do
    h2 = if stream.timer, do: act(h2, {:cancel_timer, stream.timer}), else: h2
    h2 = act(h2, {:demonitor, stream.monitor})

    h2 =
      case rst do
        nil -> h2
        :half_close -> emit(h2, {:data, stream.id, <<>>, true})
        code -> emit(h2, {:rst_stream, stream.id, code})
      end

    h2 = deliver(h2, stream, outcome)

    %{
      h2
      | streams: Map.delete(h2.streams, stream.id),
        refs: Map.delete(h2.refs, stream.ref),
        monitors: Map.delete(h2.monitors, stream.monitor)
    }
  end

  defp deliver(h2, _stream, :silent), do: h2

  defp deliver(h2, %Stream{kind: :unary, from: from, messages: messages}, outcome) do
    reply =
      case {outcome, messages} do
        {:ok, [message]} -> {:ok, message}
        {:ok, []} -> {:error, Error.internal("server sent no response message")}
        {:ok, _} -> {:error, Error.internal("server sent several messages to a unary call")}
        {{:error, _} = error, _} -> error
      end

    act(h2, {:reply, from, reply})
  end

  defp deliver(h2, %Stream{kind: :stream, owner: owner, ref: ref}, outcome),
    do: act(h2, {:send, owner, {:krait_stream, ref, {:done, outcome}}})

  defp fail_streams(h2, error) do
    h2.streams
    |> Map.values()
    |> Enum.reduce(h2, fn stream, h2 ->
      error = if stream.headers == nil, do: %{error | unprocessed: true}, else: error
      close_stream(h2, stream, {:error, error}, nil)
    end)
  end

  ## Output

  # Called for every frame and message: inlined, they cost no call of their own.
  @compile {:inline, emit: 2, act: 2}

  defp emit(h2, frame), do: %{h2 | out: [Frame.encode(frame) | h2.out]}
  defp act(h2, action), do: %{h2 | acts: [action | h2.acts]}

  # The actions of one event, in order; the frames it produced go in one write, last.
  defp take(%{out: [], acts: []} = h2), do: {h2, []}
  defp take(%{out: [], acts: acts} = h2), do: {%{h2 | acts: []}, Enum.reverse(acts)}

  defp take(%{out: out, acts: acts} = h2),
    do: {%{h2 | out: [], acts: []}, Enum.reverse(acts, [{:write, Enum.reverse(out)}])}
end
