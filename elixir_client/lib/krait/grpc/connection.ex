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
  `Krait.GRPC.Metadata` (gRPC header conventions), `Krait.GRPC.H2` (the connection's
  HTTP/2 state as plain data: frames in, messages and frames out) and this module (the
  process owning the socket, callers' monitors and deadlines, and the API).

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

  @behaviour :gen_statem
  @behaviour Krait.Channel

  alias Krait.GRPC.{Duplex, Error, H2, Metadata}

  # Local deadline: the server reports DEADLINE_EXCEEDED itself; this margin lets its
  # answer arrive first, and the call's own timeout adds a little more on top.
  @deadline_margin 200
  @call_slack 1000
  # Sockets re-armed every @active_n packets: bounded mailbox, few setopts calls.
  @active_n 100

  @doc false
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

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

  defp enter_loop(h2, nil), do: :gen_statem.enter_loop(__MODULE__, [], :connected, h2)

  defp enter_loop(h2, name) when is_atom(name),
    do: :gen_statem.enter_loop(__MODULE__, [], :connected, h2, {:local, name})

  defp enter_loop(h2, name), do: :gen_statem.enter_loop(__MODULE__, [], :connected, h2, name)

  @impl :gen_statem
  @doc false
  def init(opts) do
    case connect(opts) do
      {:ok, h2} -> {:ok, :connected, h2}
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
      h2 =
        H2.new(
          socket: socket,
          transport: transport,
          scheme: if(transport == :ssl, do: "https", else: "http"),
          metadata: Keyword.get(opts, :metadata, %{}),
          authority: authority,
          initial_window_size: opts[:initial_window_size],
          connection_window_size: opts[:connection_window_size],
          max_frame_size: opts[:max_frame_size]
        )

      with :ok <- sock_send(h2, H2.preface(h2)),
           :ok <- sock_setopts(h2, active: @active_n) do
        {:ok, h2}
      else
        {:error, reason} ->
          sock_close(h2)
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

  defp sock_send(%{transport: :ssl, socket: s}, data), do: :ssl.send(s, data)
  defp sock_send(%{socket: s}, data), do: :gen_tcp.send(s, data)
  defp sock_setopts(%{transport: :ssl, socket: s}, opts), do: :ssl.setopts(s, opts)
  defp sock_setopts(%{socket: s}, opts), do: :inet.setopts(s, opts)
  defp sock_close(%{transport: :ssl, socket: s}), do: :ssl.close(s)
  defp sock_close(%{socket: s}), do: :gen_tcp.close(s)

  ## States
  #
  # `connected`: calls open and run. `draining`: a GOAWAY was received; new calls are refused,
  # those the server accepted finish, and the process stops with `{:shutdown, :goaway}` once the
  # last one has. The data is the `Krait.GRPC.H2` struct (which also keeps the socket): every
  # event goes through one of its functions, and the actions it returns are performed here.

  @impl :gen_statem
  @doc false
  def callback_mode, do: :state_functions

  @doc false
  def connected({:call, from}, {:open, kind, path, body, timeout, metadata, call}, h2) do
    case H2.refusal(h2) do
      %Error{} = error ->
        {:keep_state_and_data, [{:reply, from, {:error, error}}]}

      nil ->
        # The server has closed the connection but that is still in the mailbox: nothing is sent.
        if closed?(h2.socket) do
          error = Error.unprocessed("connection closed by the server")
          {:keep_state_and_data, [{:reply, from, {:error, error}}]}
        else
          open(
            h2,
            from,
            Map.merge(call, %{
              kind: kind,
              path: path,
              body: body,
              timeout: timeout,
              metadata: metadata
            })
          )
        end
    end
  end

  def connected(type, event, h2), do: handle_event(type, event, h2)

  @doc false
  def draining({:call, from}, {:open, _, _, _, _, _, _}, h2),
    do: {:keep_state_and_data, [{:reply, from, {:error, H2.refusal(h2)}}]}

  def draining(type, event, h2), do: handle_event(type, event, h2)

  defp open(h2, from, call) do
    ref = make_ref()

    timer =
      call.timeout &&
        Process.send_after(self(), {:deadline, ref}, call.timeout + @deadline_margin)

    call =
      Map.merge(call, %{ref: ref, monitor: Process.monitor(call.owner), timer: timer, from: from})

    {h2, actions} = H2.open(h2, call)

    case call.kind do
      :stream -> after_event(actions, h2, {from, {:ok, ref}})
      :unary -> after_event(actions, h2, nil)
    end
  end

  # Events handled alike in both states.
  defp handle_event({:call, from}, {:cancel, ref}, h2) do
    {h2, actions} = H2.cancel(h2, ref)
    after_event(actions, h2, {from, :ok})
  end

  defp handle_event({:call, from}, :close, h2) do
    {h2, actions} = H2.close(h2)
    _ = perform(actions, h2)
    sock_close(h2)
    {:stop_and_reply, :normal, [{:reply, from, :ok}], h2}
  end

  defp handle_event(:cast, {:ack, ref, bytes}, h2) do
    {h2, actions} = H2.ack(h2, ref, bytes)
    after_event(actions, h2, nil)
  end

  # A message of a duplex call's request side (input, end of input, handler reply).
  defp handle_event(:cast, {:send, ref, parts}, h2) do
    {h2, actions} = H2.send_request(h2, ref, parts)
    after_event(actions, h2, nil)
  end

  defp handle_event(:info, {tag, socket, data}, %{socket: socket} = h2)
       when tag in [:tcp, :ssl] do
    case H2.receive_bytes(h2, data) do
      {:ok, h2, actions} ->
        after_event(actions, h2, nil)

      {:error, reason, h2, actions} ->
        # Written if it can be: the connection is over either way.
        _ = perform(actions, h2)
        {:stop, {:shutdown, {:protocol_error, reason}}, h2}
    end
  end

  defp handle_event(:info, {tag, socket}, %{socket: socket} = h2)
       when tag in [:tcp_passive, :ssl_passive] do
    # An error here means the socket is closing: :tcp_closed follows.
    _ = sock_setopts(h2, active: @active_n)
    :keep_state_and_data
  end

  defp handle_event(:info, {tag, socket}, %{socket: socket} = h2)
       when tag in [:tcp_closed, :ssl_closed] do
    h2 = fail_all(h2, Error.unavailable("connection closed by the server"))
    {:stop, {:shutdown, :closed}, h2}
  end

  defp handle_event(:info, {tag, socket, reason}, %{socket: socket} = h2)
       when tag in [:tcp_error, :ssl_error] do
    h2 = fail_all(h2, Error.unavailable("connection error: #{inspect(reason)}"))
    {:stop, {:shutdown, reason}, h2}
  end

  defp handle_event(:info, {:DOWN, monitor, :process, _pid, _reason}, h2) do
    {h2, actions} = H2.owner_down(h2, monitor)
    after_event(actions, h2, nil)
  end

  defp handle_event(:info, {:deadline, ref}, h2) do
    {h2, actions} = H2.deadline(h2, ref)
    after_event(actions, h2, nil)
  end

  defp handle_event(:info, _other, _h2), do: :keep_state_and_data

  # Crash reports and :sys.get_status show the headers sent on every call without their values
  # (the token's `authorization`).
  @impl :gen_statem
  @doc false
  def format_status(_reason, [_pdict, state, h2]) do
    headers = Enum.map(h2.headers, fn h -> put_elem(h, 1, "[redacted]") end)
    [data: [{~c"State", {state, %{h2 | headers: headers}}}]]
  end

  @impl :gen_statem
  @doc false
  def terminate(_reason, _state, h2) do
    sock_close(h2)
  end

  ## Performing actions

  # Performs every action in order (a unary reply, a message, a demonitor, the event's single
  # write, which comes last); returns the write's error, if any.
  defp perform([], _h2), do: :ok

  defp perform([{:send, pid, message} | actions], h2) do
    send(pid, message)
    perform(actions, h2)
  end

  defp perform([{:write, data} | actions], h2) do
    case sock_send(h2, data) do
      :ok ->
        perform(actions, h2)

      {:error, _} = error ->
        _ = perform(actions, h2)
        error
    end
  end

  defp perform([{:reply, from, reply} | actions], h2) do
    :gen_statem.reply(from, reply)
    perform(actions, h2)
  end

  defp perform([{:demonitor, monitor} | actions], h2) do
    Process.demonitor(monitor, [:flush])
    perform(actions, h2)
  end

  defp perform([{:cancel_timer, timer} | actions], h2) do
    Process.cancel_timer(timer)
    perform(actions, h2)
  end

  # Performs an event's actions, then answers the caller (`reply`: `{from, term}` or nil) and
  # moves to `draining` after a GOAWAY, or stops once drained.
  defp after_event(actions, h2, reply) do
    case perform(actions, h2) do
      :ok ->
        replies = if reply, do: [{:reply, elem(reply, 0), elem(reply, 1)}], else: []

        cond do
          H2.drained?(h2) ->
            sock_close(h2)
            {:stop_and_reply, {:shutdown, :goaway}, replies, h2}

          H2.draining?(h2) ->
            {:next_state, :draining, h2, replies}

          true ->
            {:keep_state, h2, replies}
        end

      {:error, reason} ->
        socket_failed(h2, reason, reply)
    end
  end

  defp socket_failed(h2, reason, reply) do
    h2 = fail_all(h2, Error.unavailable("connection lost: #{inspect(reason)}"))

    case reply do
      nil ->
        {:stop, {:shutdown, reason}, h2}

      {from, {:ok, _ref}} ->
        error = {:error, Error.unavailable("connection lost")}
        {:stop_and_reply, {:shutdown, reason}, [{:reply, from, error}], h2}

      {from, reply} ->
        {:stop_and_reply, {:shutdown, reason}, [{:reply, from, reply}], h2}
    end
  end

  defp fail_all(h2, error) do
    {h2, actions} = H2.fail_all(h2, error)
    _ = perform(actions, h2)
    h2
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
end
