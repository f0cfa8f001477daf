defmodule Krait.GRPC.Connection do
  @moduledoc """
  One HTTP/2 connection to a gRPC server on which many calls run at once: a process owning
  a `:gen_tcp` socket (h2c, prior knowledge) or, with `tls:`, an OTP `:ssl` socket that
  negotiates `h2` by ALPN and verifies the server's certificate and host name.

  Hand-written in plain OTP because no HTTP/2 or gRPC library is available here: Debian's
  cowlib (1.3) has neither HTTP/2 nor HPACK and hex.pm is unreachable. The layering
  follows Mint: `Krait.GRPC.Frame` (frame codec), `Krait.GRPC.HPACK` and
  `Krait.GRPC.Huffman` (header compression), `Krait.GRPC.MessageBuffer` (gRPC message
  reassembly), `Krait.GRPC.Stream` (per-call state and flow control),
  `Krait.GRPC.Metadata` (gRPC header conventions) and this module (the socket, the
  connection state machine and the API).

  ## Calls

    * `unary/4` sends one request message and waits for the response.
    * `start_stream/4` starts a server-streaming call whose messages are sent to an owner
      process:

          {:krait_stream, ref, {:messages, [binary], byte_count}}   # zero or more times
          {:krait_stream, ref, {:done, :ok | {:error, %Krait.GRPC.Error{}}}}  # once, last

      The owner must call `ack(conn, ref, byte_count)` once it has consumed each
      `:messages` delivery: the server is granted stream window only for acknowledged
      bytes, so a slow owner holds at most about one stream window (4 MiB by default,
      plus one message when messages exceed half a window) of unconsumed messages. An
      owner that never acks stalls its stream after one window. The owner is monitored;
      if it exits the call is cancelled. Message binaries are sub-binaries of what the
      socket received: copy (`:binary.copy/1`) small pieces kept for long.
    * `cancel/2` resets a stream with RST_STREAM(CANCEL). After it returns no further
      message for that ref is sent, but messages sent before may still be in the owner's
      mailbox: flushing them is the owner's business.

  ## Duplex calls (`ExecuteToolDuplex`)

  `start_stream/4` with `duplex: true` opens a bidirectional call: the request is sent as
  `DuplexRequest{start: request}` and the request side stays open. The caller then sends, in
  order and without waiting, `send_input/4` (an `InputBatch`), `end_input/3` and
  `handler_reply/3`. Each `DuplexResponse` is delivered by what it carries:

      {:krait_stream, ref, {:messages, [payload], byte_count}}  # chunks or result, to the owner
      {:krait_stream, ref, {:credit, items, bytes}}            # input credit, to `input_owner:`
      {:krait_stream, ref, {:handler_call, payload}}           # an encoded HandlerCall, to the owner

  `:messages` are acknowledged with `ack/3` as for any stream (the payload is the
  `ToolChunkBatch` or `ExecuteToolResponse` inside the `DuplexResponse`); credit and handler
  calls are acknowledged by the connection itself. The request side is never half-closed
  while the call runs (handler replies may follow the end of input): input ends with
  `end_input/3`, and once the response has ended the request side is closed with an empty
  END_STREAM, or reset if input was still queued. A server answering with trailers and
  RST_STREAM(NO_ERROR) ends the call with its trailers' status. Input is bounded by the
  worker's credit; what the HTTP/2 windows do not take yet waits in the connection.

  Errors are `%Krait.GRPC.Error{}`: the server's `grpc-status`, percent-decoded
  `grpc-message` and raw `grpc-status-details-bin`; transport failures are `UNAVAILABLE`.
  With a `timeout:` the call carries `grpc-timeout` and the server normally ends it with
  `DEADLINE_EXCEEDED`; a local timer a little later ends it regardless.

  ## Connection lifetime

  When the socket closes (or the server breaks the protocol) every open call fails with
  `UNAVAILABLE` and the process exits with `{:shutdown, reason}`. After a GOAWAY, calls
  the server will not process fail with `UNAVAILABLE`, new calls are refused, and the
  process exits with `{:shutdown, :goaway}` once the remaining calls finish.

  ## Flow control

  Our SETTINGS advertise a large stream window (`initial_window_size:`, 4 MiB by default)
  and the connection window is raised to `connection_window_size:` (16 MiB) and refilled
  eagerly, so large messages flow without waiting on round trips. When sending, the
  server's connection and stream windows and its maximum frame size are respected; a
  request that does not fit waits for WINDOW_UPDATEs.
  """

  use GenServer

  @behaviour Krait.Channel

  alias Krait.GRPC.{Duplex, Error, Frame, HPACK, Metadata, Stream}

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

  # Local deadline: the server reports DEADLINE_EXCEEDED itself; this margin lets its
  # answer arrive first, and the call's own timeout adds a little more on top.
  @deadline_margin 200
  @call_slack 1000
  # Sockets re-armed every @active_n packets: bounded mailbox, few setopts calls.
  @active_n 100
  @user_agent "grpc-elixir-krait/0.1.0"

  defstruct [
    :socket,
    :authority,
    transport: :gen_tcp,
    scheme: "http",
    # headers sent on every call (the token's `authorization`)
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
    out: []
  ]

  @typedoc "A connection: its pid or registered name."
  @type conn :: GenServer.server()

  @typedoc "Options of `unary/4` and `start_stream/4` (`duplex:` and `input_owner:`: streams only)."
  @type call_opts :: [
          timeout: non_neg_integer | nil,
          metadata: %{optional(String.t()) => binary},
          owner: pid,
          duplex: boolean,
          input_owner: pid
        ]

  ## API

  @doc """
  Connects to a gRPC server and starts the process owning the connection, linked to the
  caller.

  Options:

    * `port:` (required)
    * `host:` a string, charlist or IP tuple (default `"127.0.0.1"`)
    * `connect_timeout:` in ms (default 5000)
    * `name:` an atom, `{:global, term}` or `{:via, module, term}`
    * `initial_window_size:` the stream receive window we advertise (default 4 MiB)
    * `connection_window_size:` the connection receive window (default 16 MiB)
    * `max_frame_size:` the largest frame we accept (default 16384)
    * `tls:` `false` (default: plain h2c), `true` or a list of `:ssl` client options
      (`cacertfile:`, `certfile:`, `keyfile:`, ...). Verification of the server's certificate
      (`verify: :verify_peer`, against the system's CA store unless `cacertfile:`/`cacerts:`
      is given) and host name, SNI and ALPN `h2` are set unless the options override them.
    * `metadata:` a map of headers sent with every call (e.g. `%{"authorization" => "Bearer ..."}`;
      `authorization` is sent never-indexed in HPACK)

  Returns `{:error, reason}` (such as `:econnrefused`) without starting anything, and
  without an exit signal to the caller, when the connection cannot be made. Once running,
  the process exits with `{:shutdown, reason}` when the connection is lost: link to it
  from a process that traps exits, or start it under a supervisor.
  """
  @spec start_link(keyword) :: {:ok, pid} | {:error, term}
  def start_link(opts) do
    Keyword.fetch!(opts, :port)
    :proc_lib.start_link(__MODULE__, :init_it, [self(), opts])
  end

  @doc """
  Runs a unary call: sends `request` (an encoded protobuf message) to `path`
  (`"/package.Service/Method"`) and returns the encoded response message.

  Options: `timeout:` in ms (sent as `grpc-timeout`, and bounds the wait), `metadata:` a
  map of lower-case header names to values; values of `-bin` keys are raw bytes,
  base64-encoded here. Invalid metadata raises `ArgumentError`.
  """
  @spec unary(conn, String.t(), iodata, call_opts) :: {:ok, binary} | {:error, Error.t()}
  def unary(conn, path, request, opts \\ []) do
    opts = opts |> Keyword.put(:owner, self()) |> Keyword.put(:duplex, false)
    open(conn, :unary, path, request, opts)
  end

  @doc """
  Starts a server-streaming call and returns its ref at once; messages go to the owner
  (`owner:` option, default the caller) as described in the module doc.
  Options as `unary/4`, plus `owner:`, and for a bidirectional call (`ExecuteToolDuplex`)
  `duplex: true` with `input_owner:` (the process given input credit, default the owner).
  """
  @spec start_stream(conn, String.t(), iodata, call_opts) ::
          {:ok, reference} | {:error, Error.t()}
  @impl Krait.Channel
  def start_stream(conn, path, request, opts \\ []) do
    open(conn, :stream, path, request, Keyword.put_new(opts, :owner, self()))
  end

  @doc """
  Sends a batch of input items on a duplex call: `batch` is an encoded `krait.v1.InputBatch`,
  `bytes` the size of its items' data (what the caller counts against its byte credit; the
  connection measures the message itself). A cast: sent in order after what came before;
  ignored once the call is over.
  """
  @spec send_input(conn, reference, iodata, non_neg_integer) :: :ok
  @impl Krait.Channel
  def send_input(conn, ref, batch, bytes)
      when is_reference(ref) and is_integer(bytes) and bytes >= 0 do
    GenServer.cast(conn, {:send, ref, Duplex.input(batch)})
  end

  @doc """
  Ends the input of a duplex call: `:ok` when it simply ended, `{:error, message}` when the
  caller's input failed (the tool's iterator raises `InputError(message)`). The request side
  stays open for handler replies. A cast, as `send_input/4`.
  """
  @spec end_input(conn, reference, :ok | {:error, String.t()}) :: :ok
  @impl Krait.Channel
  def end_input(conn, ref, outcome) when is_reference(ref) do
    GenServer.cast(conn, {:send, ref, Duplex.input_end(outcome)})
  end

  @doc """
  Answers a handler call of a duplex call: `reply` is an encoded `krait.v1.HandlerReply`.
  A cast, as `send_input/4`.
  """
  @spec handler_reply(conn, reference, iodata) :: :ok
  @impl Krait.Channel
  def handler_reply(conn, ref, reply) when is_reference(ref) do
    GenServer.cast(conn, {:send, ref, Duplex.handler_reply(reply)})
  end

  @doc """
  Acknowledges that the owner consumed a `:messages` delivery of `byte_count` bytes, which
  lets the server send that much more on the stream.
  """
  @spec ack(conn, reference, non_neg_integer) :: :ok
  @impl Krait.Channel
  def ack(conn, ref, byte_count) when is_reference(ref) and is_integer(byte_count) do
    GenServer.cast(conn, {:ack, ref, byte_count})
  end

  @doc """
  Cancels a call with RST_STREAM(CANCEL). Once this returns, no message for `ref` is sent
  any more (not even `:done`); earlier ones may still be in the owner's mailbox.
  """
  @spec cancel(conn, reference, Krait.Channel.cancel_reason()) :: :ok
  @impl Krait.Channel
  # the reason is not sent: the server knows its own deadline (grpc-timeout)
  def cancel(conn, ref, _reason \\ :cancelled) when is_reference(ref) do
    GenServer.call(conn, {:cancel, ref})
  catch
    :exit, _ -> :ok
  end

  @doc """
  Closes the connection gracefully: sends GOAWAY, fails open calls with `UNAVAILABLE`
  and stops the process with reason `:normal`.
  """
  @spec close(conn) :: :ok
  def close(conn) do
    GenServer.call(conn, :close)
  catch
    :exit, _ -> :ok
  end

  defp open(conn, kind, path, request, opts) do
    timeout = Keyword.get(opts, :timeout)
    owner = Keyword.fetch!(opts, :owner)
    metadata = Metadata.encode_metadata(Keyword.get(opts, :metadata, %{}))
    duplex = Keyword.get(opts, :duplex, false)
    input_owner = Keyword.get(opts, :input_owner, owner)

    unless is_boolean(duplex) and is_pid(input_owner) do
      raise ArgumentError,
            "duplex: must be a boolean and input_owner: a pid, got: #{inspect({duplex, input_owner})}"
    end

    # Framed in the caller, so the connection process never copies request bodies.
    body =
      if duplex do
        Duplex.start(request)
      else
        body = IO.iodata_to_binary(request)
        [<<0, byte_size(body)::32>>, body]
      end

    call_timeout = if timeout, do: timeout + @deadline_margin + @call_slack, else: :infinity
    call = %{owner: owner, duplex: duplex, input_owner: input_owner}

    try do
      GenServer.call(conn, {:open, kind, path, body, timeout, metadata, call}, call_timeout)
    catch
      :exit, {:timeout, _} ->
        {:error, Error.deadline_exceeded()}

      :exit, reason ->
        {:error, Error.unavailable("connection not available: #{exit_reason(reason)}")}
    end
  end

  defp exit_reason({reason, {GenServer, :call, _}}), do: inspect(reason)
  defp exit_reason(reason), do: inspect(reason)

  ## Process start

  @doc false
  @spec init_it(pid, keyword) :: no_return
  def init_it(parent, opts) do
    with :ok <- register(opts[:name]),
         {:ok, state} <- connect(opts) do
      :proc_lib.init_ack(parent, {:ok, self()})
      enter_loop(state, opts[:name])
    else
      {:error, reason} ->
        :proc_lib.init_ack(parent, {:error, reason})
        # :normal, so a linked caller that does not trap exits survives the failure.
        exit(:normal)
    end
  end

  defp register(nil), do: :ok

  defp register(name) when is_atom(name) do
    try do
      Process.register(self(), name)
      :ok
    rescue
      ArgumentError -> {:error, {:already_started, Process.whereis(name)}}
    end
  end

  defp register({:global, term}) do
    case :global.register_name(term, self()) do
      :yes -> :ok
      :no -> {:error, {:already_started, :global.whereis_name(term)}}
    end
  end

  defp register({:via, module, term}) do
    case module.register_name(term, self()) do
      :yes -> :ok
      :no -> {:error, {:already_started, module.whereis_name(term)}}
    end
  end

  defp enter_loop(state, nil), do: :gen_server.enter_loop(__MODULE__, [], state)

  defp enter_loop(state, name) when is_atom(name),
    do: :gen_server.enter_loop(__MODULE__, [], state, {:local, name})

  defp enter_loop(state, name), do: :gen_server.enter_loop(__MODULE__, [], state, name)

  @impl true
  @doc false
  def init(opts) do
    case connect(opts) do
      {:ok, state} -> {:ok, state}
      {:error, reason} -> {:stop, reason}
    end
  end

  defp connect(opts) do
    host = Keyword.get(opts, :host, "127.0.0.1")
    port = Keyword.fetch!(opts, :port)
    socket_opts = [:binary, packet: :raw, active: false, nodelay: true, buffer: 262_144]

    address = if is_tuple(host), do: host, else: to_charlist(host)
    authority = if is_tuple(host), do: "#{:inet.ntoa(host)}:#{port}", else: "#{host}:#{port}"
    timeout = opts[:connect_timeout] || 5000
    tls = Keyword.get(opts, :tls, false)

    with {:ok, socket, transport} <- open_socket(address, port, socket_opts, tls, timeout) do
      state = %__MODULE__{
        socket: socket,
        transport: transport,
        scheme: if(transport == :ssl, do: "https", else: "http"),
        headers: call_headers(Keyword.get(opts, :metadata, %{})),
        authority: authority,
        encoder: HPACK.new(@our_header_table_size),
        decoder: HPACK.new(@our_header_table_size),
        window_size: opts[:initial_window_size] || 4_194_304,
        connection_window_size: opts[:connection_window_size] || 16_777_216,
        max_frame_size: opts[:max_frame_size] || 16_384
      }

      settings =
        Frame.encode(
          {:settings, false,
           [
             {@enable_push, 0},
             {@initial_window_size, state.window_size},
             {@max_frame_size, state.max_frame_size}
           ]}
        )

      # Raise the connection window from the default 65535 in the same write.
      raise_by = state.connection_window_size - @default_window
      window_update = if raise_by > 0, do: Frame.encode({:window_update, 0, raise_by}), else: []

      with :ok <- sock_send(state, [Frame.preface(), settings, window_update]),
           :ok <- sock_setopts(state, active: @active_n) do
        {:ok, %{state | recv_window: max(state.connection_window_size, @default_window)}}
      else
        {:error, reason} ->
          sock_close(state)
          {:error, reason}
      end
    end
  end

  defp open_socket(address, port, socket_opts, false, timeout) do
    with {:ok, socket} <- :gen_tcp.connect(address, port, socket_opts, timeout),
         do: {:ok, socket, :gen_tcp}
  end

  defp open_socket(address, port, socket_opts, tls, timeout) do
    ssl_opts = tls_options(address, if(tls == true, do: [], else: tls))

    with {:ok, socket} <- :ssl.connect(address, port, socket_opts ++ ssl_opts, timeout) do
      case check_tls(socket, address, ssl_opts) do
        :ok ->
          {:ok, socket, :ssl}

        error ->
          :ssl.close(socket)
          error
      end
    end
  end

  # ALPN must have chosen h2. A name is verified during the handshake (through SNI); OTP does not
  # check an IP address against the certificate, so it is checked here (its IP entries).
  defp check_tls(socket, address, ssl_opts) do
    ip = ip_address(address)

    cond do
      :ssl.negotiated_protocol(socket) != {:ok, "h2"} ->
        {:error, {:tls_alpn, "the server did not agree to HTTP/2 (ALPN h2)"}}

      # a name given as SNI was verified in the handshake
      ip == nil or ssl_opts[:verify] == :verify_none or is_list(ssl_opts[:server_name_indication]) ->
        :ok

      true ->
        {:ok, der} = :ssl.peercert(socket)
        cert = :public_key.pkix_decode_cert(der, :otp)

        if :public_key.pkix_verify_hostname(cert, ip: ip),
          do: :ok,
          else: {:error, {:tls_hostname, "the server's certificate is not for #{:inet.ntoa(ip)}"}}
    end
  end

  defp ip_address(address) when is_tuple(address), do: address

  defp ip_address(address) do
    case :inet.parse_address(address) do
      {:ok, ip} -> ip
      _ -> nil
    end
  end

  @doc false
  # The client's :ssl options: the caller's, over verification of the peer and its host name, SNI
  # (names only: an IP address is checked against the certificate's IP entries) and ALPN h2.
  @spec tls_options(:inet.hostname() | :inet.ip_address(), keyword()) :: keyword()
  def tls_options(address, user) do
    ip? = ip_address(address) != nil

    ca =
      if Keyword.has_key?(user, :cacertfile) or Keyword.has_key?(user, :cacerts),
        do: [],
        else: [cacerts: :public_key.cacerts_get()]

    defaults =
      [
        verify: :verify_peer,
        alpn_advertised_protocols: ["h2"],
        customize_hostname_check: [match_fun: :public_key.pkix_verify_hostname_match_fun(:https)],
        server_name_indication: if(ip?, do: :disable, else: address)
      ] ++ ca

    Keyword.merge(defaults, user)
  end

  defp call_headers(metadata) do
    Enum.map(metadata, fn
      {"authorization" = k, v} -> {k, v, :never_store}
      {k, v} -> {to_string(k), v}
    end)
  end

  defp sock_send(%{transport: :ssl, socket: s}, data), do: :ssl.send(s, data)
  defp sock_send(%{socket: s}, data), do: :gen_tcp.send(s, data)
  defp sock_setopts(%{transport: :ssl, socket: s}, opts), do: :ssl.setopts(s, opts)
  defp sock_setopts(%{socket: s}, opts), do: :inet.setopts(s, opts)
  defp sock_close(%{transport: :ssl, socket: s}), do: :ssl.close(s)
  defp sock_close(%{socket: s}), do: :gen_tcp.close(s)

  ## Callbacks

  @impl true
  def handle_call({:open, kind, path, body, timeout, metadata, call}, from, state) do
    cond do
      state.goaway != nil ->
        {:reply, {:error, Error.unprocessed("connection is going away (GOAWAY received)")}, state}

      state.next_id > @max_stream_id ->
        {:reply, {:error, Error.unprocessed("stream ids exhausted on this connection")}, state}

      state.peer_max_streams != :infinity and map_size(state.streams) >= state.peer_max_streams ->
        {:reply, {:error, Error.unprocessed("server's concurrent stream limit reached")}, state}

      # The server has closed the connection but that is still in the mailbox: nothing is sent.
      closed?(state.socket) ->
        {:reply, {:error, Error.unprocessed("connection closed by the server")}, state}

      true ->
        {ref, state} = open_stream(state, kind, path, body, timeout, metadata, call, from)

        case kind do
          :stream -> reply_and_flush({:ok, ref}, state)
          :unary -> noreply_and_flush(state)
        end
    end
  end

  def handle_call({:cancel, ref}, _from, state) do
    state =
      case lookup_ref(state, ref) do
        nil -> state
        stream -> close_stream(state, stream, :silent, rst: @cancel)
      end

    reply_and_flush(:ok, state) |> maybe_stop_after_goaway()
  end

  def handle_call(:close, _from, state) do
    state = emit(state, {:goaway, 0, @no_error, "closing"})
    state = fail_all(state, Error.unavailable("connection closed by the client"))
    flush(state)
    sock_close(state)
    {:stop, :normal, :ok, state}
  end

  @impl true
  def handle_cast({:ack, ref, bytes}, state) do
    case lookup_ref(state, ref) do
      nil -> {:noreply, state}
      stream -> noreply_and_flush(window_update(state, Stream.ack(stream, bytes)))
    end
  end

  # A message of a duplex call's request side (input, end of input, handler reply).
  def handle_cast({:send, ref, parts}, state) do
    case lookup_ref(state, ref) do
      %Stream{duplex: true} = stream ->
        stream = Stream.enqueue(stream, parts)
        state = %{state | streams: Map.put(state.streams, stream.id, stream)}
        noreply_and_flush(send_pending(state, stream.id))

      # The call is over, or is not a duplex call.
      _ ->
        {:noreply, state}
    end
  end

  @impl true
  def handle_info({tag, socket, data}, %{socket: socket} = state) when tag in [:tcp, :ssl] do
    case receive_bytes(state, data) do
      {:ok, state} -> noreply_and_flush(state) |> maybe_stop_after_goaway()
      {:error, code, reason, state} -> connection_error(state, code, reason)
    end
  end

  def handle_info({tag, socket}, %{socket: socket} = state)
      when tag in [:tcp_passive, :ssl_passive] do
    # An error here means the socket is closing: :tcp_closed follows.
    _ = sock_setopts(state, active: @active_n)
    {:noreply, state}
  end

  def handle_info({tag, socket}, %{socket: socket} = state)
      when tag in [:tcp_closed, :ssl_closed] do
    state = fail_all(state, Error.unavailable("connection closed by the server"))
    {:stop, {:shutdown, :closed}, state}
  end

  def handle_info({tag, socket, reason}, %{socket: socket} = state)
      when tag in [:tcp_error, :ssl_error] do
    state = fail_all(state, Error.unavailable("connection error: #{inspect(reason)}"))
    {:stop, {:shutdown, reason}, state}
  end

  def handle_info({:DOWN, monitor, :process, _pid, _reason}, state) do
    case Map.fetch(state.monitors, monitor) do
      {:ok, id} ->
        state = close_stream(state, Map.fetch!(state.streams, id), :silent, rst: @cancel)
        noreply_and_flush(state) |> maybe_stop_after_goaway()

      :error ->
        {:noreply, state}
    end
  end

  def handle_info({:deadline, ref}, state) do
    case lookup_ref(state, ref) do
      nil ->
        {:noreply, state}

      stream ->
        state = close_stream(state, stream, {:error, Error.deadline_exceeded()}, rst: @cancel)
        noreply_and_flush(state) |> maybe_stop_after_goaway()
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Crash reports and :sys.get_status show the headers sent on every call without their values
  # (the token's `authorization`).
  @impl true
  def format_status(_reason, [_pdict, state]) do
    headers = Enum.map(state.headers, fn h -> put_elem(h, 1, "[redacted]") end)
    [data: [{~c"State", %{state | headers: headers}}]]
  end

  @impl true
  def terminate(_reason, state) do
    sock_close(state)
  end

  ## Opening streams and sending

  defp open_stream(state, kind, path, body, timeout, metadata, call, from) do
    %{owner: owner, duplex: duplex, input_owner: input_owner} = call
    id = state.next_id
    ref = make_ref()

    headers =
      [
        {":method", "POST"},
        {":scheme", state.scheme},
        {":path", path},
        {":authority", state.authority},
        {"content-type", "application/grpc"},
        {"te", "trailers"},
        {"user-agent", @user_agent}
      ] ++
        if(timeout, do: [{"grpc-timeout", Metadata.encode_timeout(timeout), :no_store}], else: []) ++
        state.headers ++
        Enum.map(metadata, fn {k, v} ->
          if byte_size(v) > 256, do: {k, v, :no_store}, else: {k, v}
        end)

    {block, encoder} = HPACK.encode(headers, state.encoder)
    state = %{state | encoder: encoder, next_id: id + 2}
    state = emit_headers(state, id, IO.iodata_to_binary(block))

    timer =
      if timeout, do: Process.send_after(self(), {:deadline, ref}, timeout + @deadline_margin)

    monitor = Process.monitor(owner)

    stream =
      Stream.new(
        id: id,
        ref: ref,
        kind: kind,
        owner: owner,
        input_owner: input_owner,
        duplex: duplex,
        monitor: monitor,
        from: if(kind == :unary, do: from),
        timer: timer,
        window: state.window_size,
        recv_window: state.window_size,
        send_window: state.peer_initial_window
      )
      |> Stream.enqueue(body)

    state = %{
      state
      | streams: Map.put(state.streams, id, stream),
        refs: Map.put(state.refs, ref, id),
        monitors: Map.put(state.monitors, monitor, id)
    }

    {ref, send_pending(state, id)}
  end

  # A header block larger than the server's frame size continues in CONTINUATION frames.
  defp emit_headers(state, id, block) do
    max = state.peer_max_frame_size

    if byte_size(block) <= max do
      emit(state, {:headers, id, block, false, true})
    else
      <<first::binary-size(max), rest::binary>> = block
      emit_continuations(emit(state, {:headers, id, first, false, false}), id, rest, max)
    end
  end

  defp emit_continuations(state, id, block, max) when byte_size(block) <= max,
    do: emit(state, {:continuation, id, block, true})

  defp emit_continuations(state, id, block, max) do
    <<part::binary-size(max), rest::binary>> = block
    emit_continuations(emit(state, {:continuation, id, part, false}), id, rest, max)
  end

  # Sends as much of a stream's queued request as both windows allow. A plain call's request
  # ends with its last bytes; a duplex call's stays open.
  defp send_pending(state, id) do
    case Map.fetch(state.streams, id) do
      {:ok, %Stream{send_size: size} = stream} when size > 0 ->
        allowed = min(state.send_window, stream.send_window) |> min(state.peer_max_frame_size)

        if allowed > 0 do
          {data, taken, stream} = Stream.take_send(stream, allowed)
          stream = %{stream | send_window: stream.send_window - taken}

          state = %{
            emit(state, {:data, id, data, stream.send_size == 0 and not stream.duplex})
            | send_window: state.send_window - taken,
              streams: Map.put(state.streams, id, stream)
          }

          send_pending(state, id)
        else
          state
        end

      _ ->
        state
    end
  end

  defp send_all_pending(state) do
    state.streams
    |> Map.keys()
    |> Enum.sort()
    |> Enum.reduce(state, &send_pending(&2, &1))
  end

  ## Receiving

  defp receive_bytes(state, data) do
    case state.buffer do
      {:partial, total, parts, size} when size + byte_size(data) < total ->
        {:ok, %{state | buffer: {:partial, total, [data | parts], size + byte_size(data)}}}

      {:partial, total, parts, size} ->
        # The frame is complete: join its pieces once, copying no more than the frame; the
        # rest of `data` is decoded in place.
        <<tail::binary-size(total - size), rest::binary>> = data
        frame = IO.iodata_to_binary(Enum.reverse(parts, [tail]))

        with {:ok, state} <- decode_frames(%{state | buffer: <<>>}, frame) do
          decode_frames(state, rest)
        end

      <<>> ->
        decode_frames(state, data)

      buffer ->
        decode_frames(%{state | buffer: <<>>}, buffer <> data)
    end
  end

  defp decode_frames(state, bytes) do
    case Frame.decode(bytes, state.max_frame_size) do
      {:ok, frame, rest} ->
        case handle_frame(state, frame) do
          {:ok, state} -> decode_frames(state, rest)
          {:error, _code, _reason, _state} = error -> error
        end

      {:more, total} ->
        {:ok, %{state | buffer: {:partial, total, [bytes], byte_size(bytes)}}}

      :more ->
        {:ok, %{state | buffer: bytes}}

      {:error, {:frame_size_error, reason}} ->
        {:error, @frame_size_error, reason, state}

      {:error, {:protocol_error, reason}} ->
        {:error, @protocol_error, reason, state}
    end
  end

  # While a header block is open only its CONTINUATION frames may arrive (RFC 9113 6.10).
  defp handle_frame(%{continuation: {id, end_stream?, fragments}} = state, frame) do
    case frame do
      {:continuation, ^id, fragment, false} ->
        {:ok, %{state | continuation: {id, end_stream?, [fragment | fragments]}}}

      {:continuation, ^id, fragment, true} ->
        block = IO.iodata_to_binary(Enum.reverse(fragments, [fragment]))
        handle_header_block(%{state | continuation: nil}, id, block, end_stream?)

      _ ->
        {:error, @protocol_error, :expected_continuation, state}
    end
  end

  defp handle_frame(state, {:data, id, data, end_stream?, flow_length}) do
    with {:ok, state} <- account_connection_window(state, flow_length) do
      case Map.fetch(state.streams, id) do
        {:ok, stream} -> {:ok, receive_data(state, stream, data, end_stream?, flow_length)}
        # A stream we already closed (cancelled, timed out): drop its data.
        :error -> {:ok, state}
      end
    end
  end

  defp handle_frame(state, {:headers, id, fragment, end_stream?, true}),
    do: handle_header_block(state, id, fragment, end_stream?)

  defp handle_frame(state, {:headers, id, fragment, end_stream?, false}),
    do: {:ok, %{state | continuation: {id, end_stream?, [fragment]}}}

  defp handle_frame(state, {:continuation, _id, _fragment, _end_headers?}),
    do: {:error, @protocol_error, :unexpected_continuation, state}

  defp handle_frame(state, {:settings, false, params}) do
    with {:ok, state} <- apply_settings(state, params) do
      {:ok, emit(state, {:settings, true, []}) |> send_all_pending()}
    end
  end

  defp handle_frame(state, {:settings, true, _params}), do: {:ok, state}
  defp handle_frame(state, {:ping, false, opaque}), do: {:ok, emit(state, {:ping, true, opaque})}
  defp handle_frame(state, {:ping, true, _opaque}), do: {:ok, state}

  defp handle_frame(state, {:goaway, last_id, code, debug}) do
    message = "connection going away (GOAWAY code #{code}#{if debug != "", do: ": " <> debug})"

    state =
      state.streams
      |> Map.values()
      |> Enum.filter(&(&1.id > last_id))
      |> Enum.reduce(%{state | goaway: {last_id, code, debug}}, fn stream, state ->
        close_stream(state, stream, {:error, Error.unprocessed(message)}, rst: nil)
      end)

    {:ok, state}
  end

  defp handle_frame(state, {:rst_stream, id, code}) do
    case Map.fetch(state.streams, id) do
      {:ok, stream} ->
        {:ok, close_stream(state, stream, {:error, Metadata.from_rst_stream(code)}, rst: nil)}

      :error ->
        {:ok, state}
    end
  end

  defp handle_frame(state, {:window_update, 0, increment}) do
    window = state.send_window + increment

    if window > @max_window,
      do: {:error, @flow_control_error, :connection_window_overflow, state},
      else: {:ok, send_all_pending(%{state | send_window: window})}
  end

  defp handle_frame(state, {:window_update, id, increment}) do
    case Map.fetch(state.streams, id) do
      {:ok, stream} ->
        stream = %{stream | send_window: stream.send_window + increment}
        {:ok, send_pending(%{state | streams: Map.put(state.streams, id, stream)}, id)}

      :error ->
        {:ok, state}
    end
  end

  defp handle_frame(state, {:push_promise, _id}),
    do: {:error, @protocol_error, :push_promise_while_disabled, state}

  # PRIORITY is advisory and unknown frame types are ignored (RFC 9113 5.3, 4.1).
  defp handle_frame(state, {:priority, _id}), do: {:ok, state}
  defp handle_frame(state, {:unknown, _type, _id}), do: {:ok, state}

  defp account_connection_window(state, flow_length) do
    recv_window = state.recv_window - flow_length
    unreturned = state.recv_unreturned + flow_length

    cond do
      recv_window < 0 ->
        {:error, @flow_control_error, :connection_window_exceeded, state}

      # The connection window is refilled eagerly; streams bound memory.
      unreturned >= div(state.connection_window_size, 4) ->
        state = emit(state, {:window_update, 0, unreturned})
        {:ok, %{state | recv_window: recv_window + unreturned, recv_unreturned: 0}}

      true ->
        {:ok, %{state | recv_window: recv_window, recv_unreturned: unreturned}}
    end
  end

  defp receive_data(state, stream, data, end_stream?, flow_length) do
    case Stream.receive_data(stream, data, flow_length) do
      {:ok, messages, bytes, stream} ->
        case deliver_messages(stream, messages, bytes) do
          {:ok, stream} when end_stream? ->
            error = Error.internal("server ended the stream without trailers")
            close_stream(state, stream, {:error, error}, rst: end_request(stream))

          {:ok, stream} ->
            window_update(state, stream)

          {:error, message} ->
            close_stream(state, stream, {:error, Error.internal(message)}, rst: @cancel)
        end

      {:error, :flow_control} ->
        error = Error.internal("server exceeded the stream's flow-control window")
        close_stream(state, stream, {:error, error}, rst: @flow_control_error)

      {:error, :compressed_message} ->
        error = Error.internal("server sent a compressed message; no compression was offered")
        close_stream(state, stream, {:error, error}, rst: @cancel)
    end
  end

  defp deliver_messages(%Stream{kind: :stream, duplex: false} = stream, messages, bytes) do
    if messages != [] do
      send(stream.owner, {:krait_stream, stream.ref, {:messages, messages, bytes}})
    end

    {:ok, stream}
  end

  defp deliver_messages(%Stream{duplex: true} = stream, messages, _bytes),
    do: route_duplex(stream, messages, [], 0, 0)

  defp deliver_messages(stream, _messages, _bytes), do: {:ok, stream}

  # Tool output goes to the owner in `:messages` deliveries (consecutive ones together, order
  # kept); credit and handler calls are sent on their own and acknowledged here at once.
  defp route_duplex(stream, [], output, output_bytes, own_bytes) do
    flush_output(stream, output, output_bytes)
    {:ok, Stream.ack(stream, own_bytes)}
  end

  defp route_duplex(stream, [message | messages], output, output_bytes, own_bytes) do
    size = byte_size(message) + 5

    case Duplex.decode_response(message) do
      {:ok, {:output, payload}} ->
        route_duplex(stream, messages, [payload | output], output_bytes + size, own_bytes)

      {:ok, control} ->
        flush_output(stream, output, output_bytes)
        send_control(stream, control)
        route_duplex(stream, messages, [], 0, own_bytes + size)

      {:error, reason} ->
        flush_output(stream, output, output_bytes)
        {:error, reason}
    end
  end

  defp flush_output(_stream, [], _bytes), do: :ok

  defp flush_output(stream, output, bytes),
    do: send(stream.owner, {:krait_stream, stream.ref, {:messages, Enum.reverse(output), bytes}})

  defp send_control(stream, {:credit, items, bytes}),
    do: send(stream.input_owner, {:krait_stream, stream.ref, {:credit, items, bytes}})

  defp send_control(stream, {:handler_call, payload}),
    do: send(stream.owner, {:krait_stream, stream.ref, {:handler_call, payload}})

  defp send_control(_stream, :empty), do: :ok

  defp window_update(state, stream) do
    {increment, stream} = Stream.take_window_update(stream)
    state = %{state | streams: Map.put(state.streams, stream.id, stream)}
    if increment > 0, do: emit(state, {:window_update, stream.id, increment}), else: state
  end

  # The block must be decoded even for a stream already closed: HPACK state is shared.
  defp handle_header_block(state, id, block, end_stream?) do
    case HPACK.decode(block, state.decoder) do
      {:ok, headers, decoder} ->
        state = %{state | decoder: decoder}

        case Map.fetch(state.streams, id) do
          {:ok, stream} -> {:ok, handle_headers(state, stream, headers, end_stream?)}
          :error -> {:ok, state}
        end

      {:error, reason} ->
        {:error, @compression_error, {:hpack, reason}, state}
    end
  end

  # Response headers; with END_STREAM this is a Trailers-Only response.
  defp handle_headers(state, %Stream{headers: nil} = stream, headers, end_stream?) do
    http_status = http_status(headers)
    rst = end_request(stream)

    cond do
      end_stream? ->
        close_stream(state, stream, Metadata.status_from_trailers(headers, http_status), rst: rst)

      http_status != 200 ->
        error = Metadata.from_http_status(http_status || 0)
        close_stream(state, stream, {:error, error}, rst: @cancel)

      not grpc_content_type?(headers) ->
        error = Error.internal("response content-type is not application/grpc")
        close_stream(state, stream, {:error, error}, rst: @cancel)

      true ->
        stream = %{stream | headers: headers, http_status: http_status}
        %{state | streams: Map.put(state.streams, stream.id, stream)}
    end
  end

  # Trailers.
  defp handle_headers(state, stream, trailers, true) do
    outcome =
      case Metadata.status_from_trailers(trailers, stream.http_status) do
        :ok ->
          if Krait.GRPC.MessageBuffer.empty?(stream.buffer),
            do: :ok,
            else: {:error, Error.internal("stream ended in the middle of a message")}

        error ->
          error
      end

    close_stream(state, stream, outcome, rst: end_request(stream))
  end

  defp handle_headers(state, stream, _headers, false) do
    error = Error.internal("server sent a second header block without END_STREAM")
    close_stream(state, stream, {:error, error}, rst: @protocol_error)
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

  defp apply_settings(state, params) do
    Enum.reduce_while(params, {:ok, state}, fn {id, value}, {:ok, state} ->
      case apply_setting(state, id, value) do
        {:ok, state} -> {:cont, {:ok, state}}
        error -> {:halt, error}
      end
    end)
  end

  defp apply_setting(state, @header_table_size, value) do
    size = min(value, @our_header_table_size)

    if size == state.encoder.max_size,
      do: {:ok, state},
      else: {:ok, %{state | encoder: HPACK.resize_encoder(state.encoder, size)}}
  end

  defp apply_setting(state, @max_concurrent_streams, value),
    do: {:ok, %{state | peer_max_streams: value}}

  defp apply_setting(state, @initial_window_size, value) when value > @max_window,
    do: {:error, @flow_control_error, :initial_window_too_large, state}

  # A new initial window shifts every open stream's window by the difference (6.9.2).
  defp apply_setting(state, @initial_window_size, value) do
    delta = value - state.peer_initial_window

    streams =
      Map.new(state.streams, fn {id, s} -> {id, %{s | send_window: s.send_window + delta}} end)

    {:ok, %{state | peer_initial_window: value, streams: streams}}
  end

  defp apply_setting(state, @max_frame_size, value) when value in 16_384..16_777_215,
    do: {:ok, %{state | peer_max_frame_size: value}}

  defp apply_setting(state, @max_frame_size, _value),
    do: {:error, @protocol_error, :bad_max_frame_size, state}

  defp apply_setting(state, _id, _value), do: {:ok, state}

  ## Closing streams

  # What ends our side once the response has ended: nothing when the request was sent whole,
  # RST_STREAM(CANCEL) when some of it is still queued, an empty END_STREAM for a duplex call
  # whose request side is open (the server may have reset it already: that is harmless).
  defp end_request(%Stream{send_size: size}) when size > 0, do: @cancel
  defp end_request(%Stream{duplex: true}), do: :half_close
  defp end_request(_stream), do: nil

  # Removes a stream, optionally resetting (or half-closing) it, and tells its caller or owner
  # the outcome (`:silent` tells nobody: cancel and owner death).
  defp close_stream(state, stream, outcome, rst: rst) do
    if stream.timer, do: Process.cancel_timer(stream.timer)
    Process.demonitor(stream.monitor, [:flush])

    state =
      case rst do
        nil -> state
        :half_close -> emit(state, {:data, stream.id, <<>>, true})
        code -> emit(state, {:rst_stream, stream.id, code})
      end

    deliver(stream, outcome)

    %{
      state
      | streams: Map.delete(state.streams, stream.id),
        refs: Map.delete(state.refs, stream.ref),
        monitors: Map.delete(state.monitors, stream.monitor)
    }
  end

  defp deliver(_stream, :silent), do: :ok

  defp deliver(%Stream{kind: :unary, from: from, messages: messages}, outcome) do
    reply =
      case {outcome, messages} do
        {:ok, [message]} -> {:ok, message}
        {:ok, []} -> {:error, Error.internal("server sent no response message")}
        {:ok, _} -> {:error, Error.internal("server sent several messages to a unary call")}
        {{:error, _} = error, _} -> error
      end

    GenServer.reply(from, reply)
  end

  defp deliver(%Stream{kind: :stream, owner: owner, ref: ref}, outcome),
    do: send(owner, {:krait_stream, ref, {:done, outcome}})

  # Every stream fails with `error`; those that had no response headers yet never started on a Krait
  # worker (it answers headers before running a tool), so they are marked unprocessed.
  defp fail_all(state, error) do
    state.streams
    |> Map.values()
    |> Enum.reduce(state, fn stream, state ->
      error = if stream.headers == nil, do: %{error | unprocessed: true}, else: error
      close_stream(state, stream, {:error, error}, rst: nil)
    end)
  end

  defp closed?(socket) do
    receive do
      {tag, ^socket} = message when tag in [:tcp_closed, :ssl_closed] ->
        send(self(), message)
        true

      {tag, ^socket, _} = message when tag in [:tcp_error, :ssl_error] ->
        send(self(), message)
        true
    after
      0 -> false
    end
  end

  defp connection_error(state, code, reason) do
    state = emit(state, {:goaway, 0, code, inspect(reason)})
    flush(state)
    error = Error.unavailable("HTTP/2 protocol error: #{inspect(reason)}")
    state = fail_all(%{state | out: []}, error)
    {:stop, {:shutdown, {:protocol_error, reason}}, state}
  end

  defp lookup_ref(state, ref) do
    case Map.fetch(state.refs, ref) do
      {:ok, id} -> Map.get(state.streams, id)
      :error -> nil
    end
  end

  ## Output

  # Frames produced while handling one event are written with a single send.
  defp emit(state, frame), do: %{state | out: [Frame.encode(frame) | state.out]}

  defp flush(%{out: []} = state), do: {:ok, state}

  defp flush(state) do
    case sock_send(state, Enum.reverse(state.out)) do
      :ok -> {:ok, %{state | out: []}}
      {:error, reason} -> {:error, reason, %{state | out: []}}
    end
  end

  defp noreply_and_flush(state) do
    case flush(state) do
      {:ok, state} -> {:noreply, state}
      {:error, reason, state} -> socket_failed(state, reason)
    end
  end

  defp reply_and_flush(reply, state) do
    case flush(state) do
      {:ok, state} -> {:reply, reply, state}
      {:error, reason, state} -> socket_failed(state, reason, reply)
    end
  end

  defp socket_failed(state, reason, reply \\ nil) do
    state = fail_all(state, Error.unavailable("connection lost: #{inspect(reason)}"))

    case reply do
      nil ->
        {:stop, {:shutdown, reason}, state}

      {:ok, _ref} ->
        {:stop, {:shutdown, reason}, {:error, Error.unavailable("connection lost")}, state}

      reply ->
        {:stop, {:shutdown, reason}, reply, state}
    end
  end

  defp maybe_stop_after_goaway({:noreply, %{goaway: {_, _, _}, streams: streams} = state})
       when map_size(streams) == 0 do
    sock_close(state)
    {:stop, {:shutdown, :goaway}, state}
  end

  defp maybe_stop_after_goaway({:reply, reply, %{goaway: {_, _, _}, streams: streams} = state})
       when map_size(streams) == 0 do
    sock_close(state)
    {:stop, {:shutdown, :goaway}, reply, state}
  end

  defp maybe_stop_after_goaway(result), do: result
end
