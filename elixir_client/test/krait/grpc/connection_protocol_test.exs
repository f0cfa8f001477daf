defmodule Krait.GRPC.ConnectionProtocolTest do
  @moduledoc """
  `Krait.GRPC.Connection` against a scripted HTTP/2 server, for what grpc-core never
  sends: padding and priority, prefixes split across frames, CONTINUATION, GOAWAY with a
  low last stream id, tiny windows, RST_STREAM after trailers, a closed socket.
  """
  use ExUnit.Case, async: true

  alias Krait.GRPC.{Connection, Error, HPACK}
  alias Krait.Test.FakeH2Server, as: Server

  @moduletag timeout: 15_000

  @path "/krait.v1.ToolWorker/Ping"

  # Starts a connection to a fresh fake server whose SETTINGS (`settings`) are in force.
  # Returns the client's SETTINGS and the frames it sent before acknowledging ours.
  defp setup_pair(settings \\ [], conn_opts \\ []), do: Server.pair(settings, conn_opts)

  defp async_unary(conn, body \\ "req", opts \\ []) do
    Task.async(fn -> Connection.unary(conn, @path, body, opts) end)
  end

  test "the client announces a large window and disables push" do
    {_conn, _server, {settings, early}} = setup_pair()
    assert {2, 0} in settings
    assert {4, 4_194_304} in settings
    assert {:window_update, 0, 16_777_216 - 65_535} in early
  end

  test "PING and SETTINGS from the server are acknowledged" do
    {_conn, server, _} = setup_pair()
    Server.send_frames(server, [{:ping, false, "abcdefgh"}, {:settings, false, [{3, 100}]}])
    {_, _, server} = Server.recv_until(server, &(&1 == {:ping, true, "abcdefgh"}))
    {_, _, _} = Server.recv_until(server, &(&1 == {:settings, true, []}))
  end

  test "request headers: gRPC pseudo-headers, te, grpc-timeout and base64 -bin metadata" do
    {conn, server, _} = setup_pair()

    task =
      async_unary(conn, "payload",
        timeout: 1500,
        metadata: %{"x-id" => "7", "x-blob-bin" => <<0, 1, 2>>}
      )

    {id, headers, body, server} = Server.recv_request(server)
    assert id == 1
    assert body == Server.grpc_message("payload")

    for header <- [
          {":method", "POST"},
          {":scheme", "http"},
          {":path", @path},
          {"content-type", "application/grpc"},
          {"te", "trailers"},
          {"grpc-timeout", "1500m"},
          {"x-id", "7"},
          {"x-blob-bin", "AAEC"}
        ] do
      assert header in headers
    end

    # Pseudo-headers come first (RFC 9113 8.3).
    assert headers |> Enum.take(4) |> Enum.all?(&String.starts_with?(elem(&1, 0), ":"))

    server = Server.send_response_headers(server, id)
    Server.send_frames(server, [{:data, id, Server.grpc_message("pong"), false}])
    Server.send_trailers(server, id, 0)
    assert {:ok, "pong"} = Task.await(task)
  end

  test "padding, priority, a prefix split across frames and trailers in CONTINUATION" do
    {conn, server, _} = setup_pair()
    task = async_unary(conn)
    {id, _headers, _body, server} = Server.recv_request(server)

    {block, server} =
      Server.encode_headers(server, [{":status", "200"}, {"content-type", "application/grpc"}])

    # HEADERS with PADDED (0x8), PRIORITY (0x20) and END_HEADERS (0x4).
    payload = <<3, 0::1, 0::31, 16, block::binary, 0, 0, 0>>
    headers_frame = <<byte_size(payload)::24, 1, 0x2C, 0::1, id::31, payload::binary>>

    message = Server.grpc_message(:binary.copy("r", 100))
    <<first::binary-size(3), rest::binary>> = message
    # DATA with PADDED: pad length 7, the first 3 octets of the 5-octet prefix, padding.
    padded = <<7, first::binary, 0::56>>
    data_frame = <<byte_size(padded)::24, 0, 0x8, 0::1, id::31, padded::binary>>

    {trailers, _server} =
      Server.encode_headers(server, [{"grpc-status", "0"}, {"x-long", :binary.copy("t", 50)}])

    <<t1::binary-size(10), t2::binary-size(10), t3::binary>> = trailers

    Server.send_frames(server, [
      headers_frame,
      data_frame,
      {:data, id, rest, false},
      {:headers, id, t1, true, false},
      {:continuation, id, t2, false},
      {:continuation, id, t3, true}
    ])

    assert {:ok, payload} = Task.await(task)
    assert payload == :binary.copy("r", 100)
  end

  test "frames split across many small TCP reads are reassembled" do
    {conn, server, _} = setup_pair()
    :ok = :inet.setopts(server.socket, nodelay: true)
    {:ok, ref} = Connection.start_stream(conn, @path, "req")
    {id, _, _, server} = Server.recv_request(server)
    {headers, server} = Server.encode_headers(server, [{":status", "200"}])
    {trailers, _server} = Server.encode_headers(server, [{"grpc-status", "0"}])
    payloads = for i <- 1..5, do: :binary.copy(<<i>>, 3000 * i)

    bytes =
      IO.iodata_to_binary([
        Krait.GRPC.Frame.encode({:headers, id, headers, false, true}),
        for(
          p <- payloads,
          do: Krait.GRPC.Frame.encode({:data, id, Server.grpc_message(p), false})
        ),
        Krait.GRPC.Frame.encode({:headers, id, trailers, true, true})
      ])

    for <<piece::binary-size(97) <- bytes>>, do: :ok = :gen_tcp.send(server.socket, piece)

    :ok =
      :gen_tcp.send(
        server.socket,
        binary_part(bytes, byte_size(bytes), -rem(byte_size(bytes), 97))
      )

    received = collect_messages(ref)
    assert received == payloads
  end

  defp collect_messages(ref) do
    receive do
      {:krait_stream, ^ref, {:messages, messages, _}} -> messages ++ collect_messages(ref)
      {:krait_stream, ^ref, {:done, :ok}} -> []
    after
      2000 -> flunk("stream did not finish")
    end
  end

  test "Trailers-Only: one HEADERS frame with END_STREAM carries the status" do
    {conn, server, _} = setup_pair()
    task = async_unary(conn)
    {id, _, _, server} = Server.recv_request(server)
    details = <<8, 5, 18, 4, "nope">>

    {block, _} =
      Server.encode_headers(server, [
        {":status", "200"},
        {"content-type", "application/grpc"},
        {"grpc-status", "5"},
        {"grpc-message", "not%20found"},
        {"grpc-status-details-bin", Base.encode64(details, padding: false), :no_store}
      ])

    Server.send_frames(server, [{:headers, id, block, true, true}])

    assert {:error, %Error{status: 5, message: "not found", details: ^details}} = Task.await(task)
  end

  test "trailers followed by RST_STREAM(NO_ERROR): grpc-status is trusted" do
    {conn, server, _} = setup_pair()
    task = async_unary(conn, "req", timeout: 300)
    {id, _, _, server} = Server.recv_request(server)
    server = Server.send_response_headers(server, id)
    Server.send_trailers(server, id, 4, [{"grpc-message", "Deadline Exceeded"}])
    Server.send_frames(server, [{:rst_stream, id, 0}])
    assert {:error, %Error{status: 4, message: "Deadline Exceeded"}} = Task.await(task)
    assert elem(:sys.get_state(conn), 1).streams == %{}
  end

  test "RST_STREAM codes become gRPC statuses" do
    {conn, server, _} = setup_pair()
    task = async_unary(conn)
    {id, _, _, server} = Server.recv_request(server)
    Server.send_frames(server, [{:rst_stream, id, 7}])
    assert {:error, %Error{status: 14}} = Task.await(task)
  end

  test "a non-200 HTTP status without grpc-status maps to a gRPC status" do
    {conn, server, _} = setup_pair()
    task = async_unary(conn)
    {id, _, _, server} = Server.recv_request(server)
    {block, _} = Server.encode_headers(server, [{":status", "503"}])
    Server.send_frames(server, [{:headers, id, block, true, true}])
    assert {:error, %Error{status: 14}} = Task.await(task)
  end

  test "a stream that ends without trailers is an error" do
    {conn, server, _} = setup_pair()
    {:ok, ref} = Connection.start_stream(conn, @path, "req")
    {id, _, _, server} = Server.recv_request(server)
    server = Server.send_response_headers(server, id)
    Server.send_frames(server, [{:data, id, Server.grpc_message("one"), true}])
    assert_receive {:krait_stream, ^ref, {:messages, ["one"], 8}}, 2000
    assert_receive {:krait_stream, ^ref, {:done, {:error, %Error{status: 13}}}}, 2000
  end

  test "the server's dynamic table is followed across responses" do
    {conn, server, _} = setup_pair()

    Enum.reduce(1..5, server, fn i, server ->
      task = async_unary(conn)
      {id, _, _, server} = Server.recv_request(server)
      server = Server.send_response_headers(server, id)
      Server.send_frames(server, [{:data, id, Server.grpc_message("r#{i}"), false}])
      server = Server.send_trailers(server, id, 0, [{"x-server", "same"}])
      assert {:ok, "r#{i}"} == Task.await(task)
      server
    end)

    # content-type, grpc-status and x-server were indexed once and then referenced.
    assert length(HPACK.entries(elem(:sys.get_state(conn), 1).decoder)) == 3
  end

  test "a request larger than the server's windows is sent as WINDOW_UPDATEs allow" do
    {conn, server, _} = setup_pair([{4, 1000}, {5, 16_384}])
    body = :crypto.strong_rand_bytes(100_000)
    task = async_unary(conn, body)

    {{:headers, id, _, _, _}, _, server} =
      Server.recv_until(server, &match?({:headers, _, _, _, _}, &1))

    {received, server} = recv_data(server, id, 1000)
    assert received == 1000
    # Nothing more until the stream window grows.
    server = refute_frame(server, &match?({:data, _, _, _, _}, &1))

    Server.send_frames(server, [{:window_update, id, 200_000}])
    {received, server} = recv_data(server, id, 65_535 - 1000)
    assert received == 65_535 - 1000
    # Now the connection window (65535) is the limit.
    server = refute_frame(server, &match?({:data, _, _, _, _}, &1))

    Server.send_frames(server, [{:window_update, 0, 100_000}])
    {received, server} = recv_data(server, id, 100_005 - 65_535)
    assert received == 100_005 - 65_535

    server = Server.send_response_headers(server, id)
    Server.send_frames(server, [{:data, id, Server.grpc_message("ok"), false}])
    Server.send_trailers(server, id, 0)
    assert {:ok, "ok"} = Task.await(task)
  end

  # Reads frames for `ms` milliseconds and fails if one matches `fun`.
  defp refute_frame(server, fun, ms \\ 200) do
    deadline = System.monotonic_time(:millisecond) + ms
    refute_frame_until(server, fun, deadline)
  end

  defp refute_frame_until(server, fun, deadline) do
    remaining = deadline - System.monotonic_time(:millisecond)

    case Server.recv(server, max(remaining, 0)) do
      {{:closed, :timeout}, server} ->
        server

      {frame, server} ->
        refute fun.(frame), "unexpected frame #{inspect(frame)}"
        refute_frame_until(server, fun, deadline)
    end
  end

  # Reads DATA frames of stream `id` until `expected` octets arrived; no frame may exceed
  # the default maximum frame size.
  defp recv_data(server, id, expected, got \\ 0) do
    if got >= expected do
      {got, server}
    else
      {{:data, ^id, data, _end?, _}, _, server} =
        Server.recv_until(server, &match?({:data, _, _, _, _}, &1))

      assert byte_size(data) <= 16_384
      recv_data(server, id, expected, got + byte_size(data))
    end
  end

  test "stream window is granted back only as the owner acknowledges" do
    {conn, server, _} = setup_pair([], initial_window_size: 65_536)
    {:ok, ref} = Connection.start_stream(conn, @path, "req")
    {id, _, _, server} = Server.recv_request(server)
    server = Server.send_response_headers(server, id)
    <<a::binary-size(16_000), b::binary>> = Server.grpc_message(:binary.copy("m", 20_000))
    Server.send_frames(server, for(part <- [a, b, a, b], do: {:data, id, part, false}))

    assert_receive {:krait_stream, ^ref, {:messages, [_], 20_005}}, 2000
    assert_receive {:krait_stream, ^ref, {:messages, [_], 20_005}}, 2000
    # No acknowledgement yet: no WINDOW_UPDATE for the stream.
    server = refute_frame(server, &match?({:window_update, ^id, _}, &1))

    # Acknowledgements below a quarter of the window wait to be batched.
    Connection.ack(conn, ref, 10_000)
    server = refute_frame(server, &match?({:window_update, ^id, _}, &1))
    Connection.ack(conn, ref, 30_010)
    {frame, _, server} = Server.recv_until(server, &match?({:window_update, ^id, _}, &1))
    assert frame == {:window_update, id, 40_010}

    Server.send_trailers(server, id, 0)
    assert_receive {:krait_stream, ^ref, {:done, :ok}}, 2000
  end

  test "GOAWAY fails the streams above last_stream_id, refuses new ones, then stops" do
    {conn, server, _} = setup_pair()
    monitor = Process.monitor(conn)
    {:ok, ref1} = Connection.start_stream(conn, @path, "a")
    {:ok, ref3} = Connection.start_stream(conn, @path, "b")
    {1, _, _, server} = Server.recv_request(server)
    {3, _, _, server} = Server.recv_request(server)

    Server.send_frames(server, [{:goaway, 1, 0, "draining"}])

    assert_receive {:krait_stream, ^ref3,
                    {:done, {:error, %Error{status: 14, message: message}}}},
                   2000

    assert message =~ "draining"
    assert {:error, %Error{status: 14}} = Connection.start_stream(conn, @path, "c")

    server = Server.send_response_headers(server, 1)
    Server.send_trailers(server, 1, 0)
    assert_receive {:krait_stream, ^ref1, {:done, :ok}}, 2000
    assert_receive {:DOWN, ^monitor, :process, ^conn, {:shutdown, :goaway}}, 2000
  end

  test "cancel sends RST_STREAM(CANCEL) and nothing more reaches the owner" do
    {conn, server, _} = setup_pair()
    {:ok, ref} = Connection.start_stream(conn, @path, "a")
    {id, _, _, server} = Server.recv_request(server)
    :ok = Connection.cancel(conn, ref)
    {_, _, server} = Server.recv_until(server, &(&1 == {:rst_stream, id, 8}))
    server = Server.send_response_headers(server, id)
    Server.send_frames(server, [{:data, id, Server.grpc_message("late"), false}])
    Server.send_trailers(server, id, 0)
    refute_receive {:krait_stream, ^ref, _}, 200
    # The connection still works (and its HPACK state followed the ignored headers).
    task = async_unary(conn)
    {id2, _, _, server} = Server.recv_request(server)
    server = Server.send_response_headers(server, id2)
    Server.send_frames(server, [{:data, id2, Server.grpc_message("fine"), false}])
    Server.send_trailers(server, id2, 0)
    assert {:ok, "fine"} = Task.await(task)
  end

  test "a local deadline fires when the server never answers" do
    {conn, server, _} = setup_pair()
    task = async_unary(conn, "req", timeout: 100)
    {id, _, _, server} = Server.recv_request(server)
    assert {:error, %Error{status: 4}} = Task.await(task)
    {_, _, _} = Server.recv_until(server, &(&1 == {:rst_stream, id, 8}))
  end

  test "a protocol error sends GOAWAY, fails open calls and stops the connection" do
    {conn, server, _} = setup_pair()
    monitor = Process.monitor(conn)
    {:ok, ref} = Connection.start_stream(conn, @path, "a")
    {_id, _, _, server} = Server.recv_request(server)
    # An indexed header field pointing past both tables.
    Server.send_frames(server, [{:headers, 1, <<0xFF, 0x7F>>, false, true}])
    assert_receive {:krait_stream, ^ref, {:done, {:error, %Error{status: 14}}}}, 2000
    {{:goaway, 0, 9, _}, _, _} = Server.recv_until(server, &match?({:goaway, _, _, _}, &1))
    assert_receive {:DOWN, ^monitor, :process, ^conn, {:shutdown, {:protocol_error, _}}}, 2000
  end

  test "a closed socket fails every open call and stops the connection" do
    {conn, server, _} = setup_pair()
    monitor = Process.monitor(conn)
    {:ok, ref} = Connection.start_stream(conn, @path, "a")
    task = async_unary(conn)
    {_, _, _, server} = Server.recv_request(server)
    {_, _, _, server} = Server.recv_request(server)
    Server.close(server)
    assert_receive {:krait_stream, ^ref, {:done, {:error, %Error{status: 14}}}}, 2000
    assert {:error, %Error{status: 14}} = Task.await(task)
    assert_receive {:DOWN, ^monitor, :process, ^conn, {:shutdown, :closed}}, 2000
  end
end
