defmodule Krait.Test.FakeH2Server do
  @moduledoc """
  A scripted HTTP/2 server for protocol edge cases that grpc-core never produces (padding,
  priority, split prefixes, GOAWAY with a low last stream id, tiny windows...).

  The test process plays the server: it accepts the connection, reads frames and writes
  frames with `Krait.GRPC.Frame` and `Krait.GRPC.HPACK`, one step at a time.
  """

  alias Krait.GRPC.{Frame, HPACK}

  defstruct [:socket, buffer: <<>>, encoder: HPACK.new(), decoder: HPACK.new()]

  @type t :: %__MODULE__{socket: port, buffer: binary, encoder: HPACK.t(), decoder: HPACK.t()}

  @doc "Listens on a free port of 127.0.0.1."
  @spec listen() :: {port, :inet.port_number()}
  def listen do
    {:ok, listener} =
      :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false, reuseaddr: true])

    {:ok, port} = :inet.port(listener)
    {listener, port}
  end

  @doc """
  Accepts the client, checks its preface and SETTINGS, sends ours (`settings`, a list of
  `{id, value}`) and waits until the client acknowledges them, so that they are in force.
  Returns the server, the client's SETTINGS parameters and the other frames it sent first.
  """
  @spec accept(port, [{non_neg_integer, non_neg_integer}]) ::
          {t, [{non_neg_integer, non_neg_integer}], [Frame.t()]}
  def accept(listener, settings \\ []) do
    {:ok, socket} = :gen_tcp.accept(listener, 5000)
    preface = Frame.preface()
    {:ok, ^preface} = :gen_tcp.recv(socket, byte_size(preface), 5000)
    server = %__MODULE__{socket: socket}
    {{:settings, false, params}, server} = recv(server)
    send_frames(server, [{:settings, false, settings}, {:settings, true, []}])
    {_ack, early, server} = recv_until(server, &(&1 == {:settings, true, []}))
    {server, params, early}
  end

  @doc """
  Starts a `Krait.GRPC.Connection` (under the calling test's supervisor, `conn_opts` added) to a fresh
  fake server whose SETTINGS (`settings`) are in force. Returns the connection, the server's socket,
  and the client's SETTINGS with the frames it sent before acknowledging ours.
  """
  def pair(settings \\ [], conn_opts \\ []) do
    {listener, port} = listen()
    spec = {Krait.GRPC.Connection, Keyword.put(conn_opts, :port, port)}

    conn =
      ExUnit.Callbacks.start_supervised!(
        Supervisor.child_spec(spec, id: make_ref(), restart: :temporary)
      )

    {server, client_settings, early} = accept(listener, settings)
    :gen_tcp.close(listener)
    {conn, server, {client_settings, early}}
  end

  @doc "Writes frames (tuples as `Krait.GRPC.Frame.encode/1` takes them, or raw binaries)."
  @spec send_frames(t, [Frame.t() | binary]) :: :ok
  def send_frames(server, frames) do
    :ok =
      :gen_tcp.send(
        server.socket,
        Enum.map(frames, &if(is_binary(&1), do: &1, else: Frame.encode(&1)))
      )
  end

  @doc "Reads the next frame."
  @spec recv(t, timeout) :: {Frame.t(), t}
  def recv(server, timeout \\ 5000) do
    case Frame.decode(server.buffer, 16_777_215) do
      {:ok, frame, rest} ->
        {frame, %{server | buffer: rest}}

      _more ->
        case :gen_tcp.recv(server.socket, 0, timeout) do
          {:ok, data} -> recv(%{server | buffer: server.buffer <> data}, timeout)
          {:error, reason} -> {{:closed, reason}, server}
        end
    end
  end

  @doc "Reads frames until one matches `fun`, skipping the others; returns the skipped too."
  @spec recv_until(t, (Frame.t() -> boolean), timeout) :: {Frame.t(), [Frame.t()], t}
  def recv_until(server, fun, timeout \\ 5000), do: recv_until(server, fun, timeout, [])

  defp recv_until(server, fun, timeout, skipped) do
    {frame, server} = recv(server, timeout)

    cond do
      fun.(frame) -> {frame, Enum.reverse(skipped), server}
      match?({:closed, _}, frame) -> raise "connection closed while waiting for a frame"
      true -> recv_until(server, fun, timeout, [frame | skipped])
    end
  end

  @doc "Reads one request: its decoded headers and its whole body (until END_STREAM)."
  @spec recv_request(t) :: {pos_integer, [{binary, binary}], binary, t}
  def recv_request(server) do
    {{:headers, id, block, false, true}, _, server} =
      recv_until(server, &match?({:headers, _, _, _, _}, &1))

    {:ok, headers, decoder} = HPACK.decode(block, server.decoder)
    {body, server} = recv_body(%{server | decoder: decoder}, id, [])
    {id, headers, body, server}
  end

  defp recv_body(server, id, acc) do
    case recv_until(server, &match?({:data, ^id, _, _, _}, &1)) do
      {{:data, ^id, data, true, _}, _, server} ->
        {IO.iodata_to_binary(Enum.reverse([data | acc])), server}

      {{:data, ^id, data, false, _}, _, server} ->
        recv_body(server, id, [data | acc])
    end
  end

  @doc "HPACK-encodes `headers` with the server's encoder."
  @spec encode_headers(t, [HPACK.header()]) :: {binary, t}
  def encode_headers(server, headers) do
    {block, encoder} = HPACK.encode(headers, server.encoder)
    {IO.iodata_to_binary(block), %{server | encoder: encoder}}
  end

  @doc "Sends response headers (`:status` 200, gRPC content type)."
  @spec send_response_headers(t, pos_integer) :: t
  def send_response_headers(server, id) do
    {block, server} =
      encode_headers(server, [{":status", "200"}, {"content-type", "application/grpc"}])

    send_frames(server, [{:headers, id, block, false, true}])
    server
  end

  @doc "Sends trailers with `grpc-status` and optional extra headers."
  @spec send_trailers(t, pos_integer, non_neg_integer, [{binary, binary}]) :: t
  def send_trailers(server, id, status, extra \\ []) do
    {block, server} = encode_headers(server, [{"grpc-status", Integer.to_string(status)} | extra])
    send_frames(server, [{:headers, id, block, true, true}])
    server
  end

  @doc "A gRPC length-prefixed message."
  @spec grpc_message(binary) :: binary
  def grpc_message(payload), do: <<0, byte_size(payload)::32, payload::binary>>

  @doc "Closes the server's socket."
  @spec close(t) :: :ok
  def close(server), do: :gen_tcp.close(server.socket)
end
