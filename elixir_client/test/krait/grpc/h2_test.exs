defmodule Krait.GRPC.H2Test do
  @moduledoc """
  `Krait.GRPC.H2`, the connection's HTTP/2 state, as plain data: no socket, no process. The
  server's frames are encoded here with `Krait.GRPC.Frame` and `Krait.GRPC.HPACK`, and the
  actions returned (messages, replies, demonitors, timers, the frames written) are checked
  one by one.
  """
  use ExUnit.Case, async: true

  alias Krait.GRPC.{Duplex, Error, Frame, H2, HPACK}
  alias Krait.Proto.Wire

  @path "/krait.v1.ToolWorker/Ping"
  @window 4_194_304

  ## Helpers

  defp new(opts \\ []), do: H2.new([authority: "localhost:1"] ++ opts)

  # A call as the process would open it; `monitor`, `timer` and `from` are plain refs here.
  defp call(opts) do
    kind = Keyword.get(opts, :kind, :unary)
    duplex = Keyword.get(opts, :duplex, false)
    request = Keyword.get(opts, :request, "req")

    %{
      ref: make_ref(),
      kind: kind,
      path: @path,
      body: if(duplex, do: Duplex.start(request), else: grpc(request)),
      timeout: Keyword.get(opts, :timeout),
      metadata: Keyword.get(opts, :metadata, []),
      owner: self(),
      input_owner: Keyword.get(opts, :input_owner, self()),
      duplex: duplex,
      monitor: make_ref(),
      timer: Keyword.get(opts, :timer),
      from: if(kind == :unary, do: {self(), make_ref()})
    }
  end

  defp open(h2, opts \\ []) do
    call = call(opts)
    {h2, actions} = H2.open(h2, call)
    {h2, call, actions}
  end

  defp grpc(payload), do: <<0, byte_size(payload)::32, payload::binary>>

  # The frames of every `{:write, _}` action.
  defp written(actions) do
    actions
    |> Enum.flat_map(fn
      {:write, data} -> [IO.iodata_to_binary(data)]
      _ -> []
    end)
    |> Enum.join()
    |> decode_all([])
  end

  defp decode_all(<<>>, acc), do: Enum.reverse(acc)

  defp decode_all(bytes, acc) do
    {:ok, frame, rest} = Frame.decode(bytes, 16_777_215)
    decode_all(rest, [frame | acc])
  end

  # Actions other than writes.
  defp others(actions), do: Enum.reject(actions, &match?({:write, _}, &1))

  defp bytes(frames), do: IO.iodata_to_binary(Enum.map(frames, &Frame.encode/1))

  defp recv(h2, frames) do
    {:ok, h2, actions} = H2.receive_bytes(h2, bytes(frames))
    {h2, actions}
  end

  defp block(headers) do
    {block, _} = HPACK.encode(headers, HPACK.new())
    IO.iodata_to_binary(block)
  end

  defp response_headers(id, extra \\ []),
    do:
      {:headers, id, block([{":status", "200"}, {"content-type", "application/grpc"}] ++ extra),
       false, true}

  defp trailers(id, status, extra \\ []),
    do: {:headers, id, block([{"grpc-status", Integer.to_string(status)}] ++ extra), true, true}

  defp data(id, payload, end_stream? \\ false), do: {:data, id, grpc(payload), end_stream?}

  # Opens a call and gives it response headers.
  defp started(h2, opts \\ []) do
    {h2, call, _} = open(h2, opts)
    {h2, []} = recv(h2, [response_headers(h2.next_id - 2)])
    {h2, call, h2.next_id - 2}
  end

  defp decode_headers(frames) do
    [{:headers, _, block, _, true}] = Enum.filter(frames, &match?({:headers, _, _, _, _}, &1))
    {:ok, headers, _} = HPACK.decode(block, HPACK.new())
    headers
  end

  ## Setup

  test "preface: SETTINGS (no push, our window and frame size) and the connection window raise" do
    h2 = new(initial_window_size: 1000, connection_window_size: 100_000, max_frame_size: 20_000)
    <<preface::binary-size(24), rest::binary>> = IO.iodata_to_binary(H2.preface(h2))
    assert preface == Frame.preface()

    assert [{:settings, false, [{2, 0}, {4, 1000}, {5, 20_000}]}, {:window_update, 0, 34_465}] =
             decode_all(rest, [])

    assert h2.recv_window == 100_000
  end

  test "preface: no WINDOW_UPDATE when the connection window is not above the default" do
    h2 = new(connection_window_size: 65_535)
    <<_::binary-size(24), rest::binary>> = IO.iodata_to_binary(H2.preface(h2))
    assert [{:settings, false, _}] = decode_all(rest, [])
  end

  ## Opening

  test "open: headers with gRPC pseudo-headers, timeout and metadata, then the whole request" do
    h2 = new(metadata: %{"authorization" => "Bearer t", "x-app" => "a"})
    big = String.duplicate("v", 300)
    {h2, call, actions} = open(h2, timeout: 1500, metadata: [{"x-id", "7"}, {"x-big", big}])
    assert [{:headers, 1, _, false, true}, {:data, 1, body, true, _}] = frames = written(actions)
    assert body == grpc("req")
    assert others(actions) == []

    headers = decode_headers(frames)

    for header <- [
          {":method", "POST"},
          {":scheme", "http"},
          {":path", @path},
          {":authority", "localhost:1"},
          {"te", "trailers"},
          {"grpc-timeout", "1500m"},
          {"authorization", "Bearer t"},
          {"x-app", "a"},
          {"x-id", "7"},
          {"x-big", big}
        ] do
      assert header in headers
    end

    assert h2.next_id == 3
    assert H2.lookup_ref(h2, call.ref).id == 1
    assert h2.monitors == %{call.monitor => 1}
    assert {"authorization", "Bearer t", :never_store} in h2.headers
  end

  test "open: no grpc-timeout without a timeout; stream ids go up by two" do
    {h2, _, actions} = open(new())
    refute List.keymember?(decode_headers(written(actions)), "grpc-timeout", 0)
    {_h2, _, actions} = open(h2)
    assert [{:headers, 3, _, _, _} | _] = written(actions)
  end

  test "open: a header block larger than the server's frame size continues in CONTINUATION" do
    big = :crypto.strong_rand_bytes(40_000) |> Base.encode64()
    {_h2, _, actions} = open(new(), metadata: [{"x-big", big}])

    assert [{:headers, 1, first, false, false} | rest] = written(actions)
    assert [{:data, 1, _, true, _}, {:continuation, 1, last, true} | middle] = Enum.reverse(rest)

    assert middle != [] and
             Enum.all?(
               middle,
               &match?({:continuation, 1, part, false} when byte_size(part) == 16_384, &1)
             )

    assert byte_size(first) == 16_384 and byte_size(last) <= 16_384

    block =
      Enum.map_join(
        [{:c, 1, first, false} | Enum.reverse(middle)] ++ [{:c, 1, last, true}],
        &elem(&1, 2)
      )

    {:ok, headers, _} = HPACK.decode(block, HPACK.new())
    assert {"x-big", big} in headers
  end

  test "open: a duplex call's request side stays open" do
    {_h2, _, actions} = open(new(), kind: :stream, duplex: true)
    assert [{:headers, 1, _, false, true}, {:data, 1, _, false, _}] = written(actions)
  end

  test "refusal: nil, then GOAWAY, exhausted ids, the server's stream limit" do
    h2 = new()
    assert H2.refusal(h2) == nil
    assert %Error{status: 14, unprocessed: true} = H2.refusal(%{h2 | next_id: 2_147_483_649})

    {h2, _} = recv(h2, [{:settings, false, [{3, 1}]}])
    {h2, _, _} = open(h2)

    assert %Error{message: "server's concurrent stream limit reached", unprocessed: true} =
             H2.refusal(h2)

    {h2, _} = recv(new(), [{:goaway, 0, 0, ""}])
    assert %Error{message: "connection is going away (GOAWAY received)"} = H2.refusal(h2)
  end

  ## Unary responses

  test "unary: headers, one message and trailers reply {:ok, message}" do
    {h2, call, id} = started(new(), timer: timer = make_ref())
    {h2, []} = recv(h2, [data(id, "pong")])
    {h2, actions} = recv(h2, [trailers(id, 0)])

    assert actions == [
             {:cancel_timer, timer},
             {:demonitor, call.monitor},
             {:reply, call.from, {:ok, "pong"}}
           ]

    assert h2.streams == %{} and h2.refs == %{} and h2.monitors == %{}
  end

  test "unary: no message, several messages" do
    {h2, call, id} = started(new())
    {_h2, actions} = recv(h2, [trailers(id, 0)])
    from = call.from

    assert {:reply, ^from, {:error, %Error{message: "server sent no response message"}}} =
             List.last(others(actions))

    {h2, _call, id} = started(new())
    {_h2, actions} = recv(h2, [data(id, "a"), data(id, "b"), trailers(id, 0)])

    assert {:reply, _, {:error, %Error{status: 13, message: "server sent several messages" <> _}}} =
             List.last(others(actions))
  end

  test "trailers with an error status, and trailers cutting a message short" do
    {h2, _call, id} = started(new())
    {_h2, actions} = recv(h2, [trailers(id, 5, [{"grpc-message", "not%20here"}])])

    assert {:reply, _, {:error, %Error{status: 5, message: "not here"}}} =
             List.last(others(actions))

    {h2, _call, id} = started(new(), kind: :stream)
    {_h2, actions} = recv(h2, [{:data, id, <<0, 0, 0, 0, 9, "abc">>, false}, trailers(id, 0)])

    assert [{:demonitor, _}, {:send, _, {:krait_stream, _, {:done, {:error, error}}}}] = actions
    assert error.message == "stream ended in the middle of a message"
  end

  test "Trailers-Only response (headers with END_STREAM)" do
    {h2, _call, actions} = open(new())
    assert [_, {:data, 1, _, true, _}] = written(actions)

    {_h2, actions} =
      recv(h2, [{:headers, 1, block([{":status", "200"}, {"grpc-status", "7"}]), true, true}])

    assert [{:demonitor, _}, {:reply, _, {:error, %Error{status: 7}}}] = actions
  end

  test "a non-200 status and a wrong content-type reset the stream" do
    {h2, _call, _} = open(new())
    {_h2, actions} = recv(h2, [{:headers, 1, block([{":status", "503"}]), false, true}])
    assert [{:rst_stream, 1, 8}] = written(actions)

    assert {:reply, _, {:error, %Error{status: 14, message: "HTTP status 503"}}} =
             Enum.at(actions, 1)

    {h2, _call, _} = open(new())

    {_h2, actions} =
      recv(h2, [
        {:headers, 1, block([{":status", "200"}, {"content-type", "text/html"}]), false, true}
      ])

    assert [{:rst_stream, 1, 8}] = written(actions)

    assert {:reply, _, {:error, %Error{status: 13, message: "response content-type" <> _}}} =
             Enum.at(actions, 1)

    # No content-type at all is accepted.
    {h2, _call, _} = open(new())
    {h2, []} = recv(h2, [{:headers, 1, block([{":status", "200"}]), false, true}])
    assert H2.lookup_ref(h2, hd(Map.keys(h2.refs))).headers != nil
  end

  test "a second header block without END_STREAM is a stream error" do
    {h2, _call, id} = started(new())
    {_h2, actions} = recv(h2, [response_headers(id)])
    assert [{:rst_stream, 1, 1}] = written(actions)

    assert {:reply, _, {:error, %Error{message: "server sent a second header block" <> _}}} =
             List.last(others(actions))
  end

  test "DATA with END_STREAM and no trailers fails the call" do
    {h2, _call, id} = started(new(), kind: :stream)
    {_h2, actions} = recv(h2, [data(id, "x", true)])

    assert [
             {:send, _, {:krait_stream, _, {:messages, ["x"], 6}}},
             {:demonitor, _},
             {:send, _,
              {:krait_stream, _,
               {:done, {:error, %Error{message: "server ended the stream without trailers"}}}}}
           ] = actions
  end

  test "header blocks of closed streams are still decoded (shared HPACK state)" do
    h2 = new()
    {block, encoder} = HPACK.encode([{":status", "200"}, {"x-a", "1"}], HPACK.new())
    {h2, []} = recv(h2, [{:headers, 9, IO.iodata_to_binary(block), false, true}])
    assert length(HPACK.entries(h2.decoder)) == 1
    {block, _} = HPACK.encode([{"x-a", "1"}], encoder)
    {_h2, []} = recv(h2, [{:headers, 11, IO.iodata_to_binary(block), false, true}])
  end

  test "an undecodable header block is a COMPRESSION_ERROR" do
    {h2, call, _} = open(new())

    {:error, {:hpack, _}, h2, actions} =
      H2.receive_bytes(h2, bytes([{:headers, 1, <<0xFF, 0xFF, 0xFF, 0xFF, 0xFF>>, false, true}]))

    assert [{:goaway, 0, 9, _}] = written(actions)
    from = call.from

    assert Enum.any?(
             actions,
             &match?({:reply, ^from, {:error, %Error{status: 14, unprocessed: true}}}, &1)
           )

    assert h2.streams == %{}
  end

  ## Streams, acknowledgement and windows

  test "stream: messages go to the owner; window returned only when acknowledged" do
    {h2, call, id} = started(new(max_frame_size: 1_000_000), kind: :stream)
    payload = :binary.copy("a", 600_000)
    {h2, actions} = recv(h2, [data(id, payload), data(id, payload)])
    ref = call.ref

    assert [{:send, pid, {:krait_stream, ^ref, {:messages, [_], 600_005}}}, {:send, pid, _}] =
             actions

    assert pid == self()

    {h2, []} = H2.ack(h2, ref, 600_005)
    {h2, actions} = H2.ack(h2, ref, 600_005)
    assert written(actions) == [{:window_update, id, 1_200_010}]
    assert H2.lookup_ref(h2, ref).recv_window == @window
    assert H2.ack(h2, make_ref(), 10) == {h2, []}
  end

  test "the connection window is refilled once a quarter is due" do
    h2 = new(connection_window_size: 100_000, max_frame_size: 100_000)
    {h2, _call, id} = started(h2)
    {h2, []} = recv(h2, [data(id, :binary.copy("a", 20_000))])
    assert h2.recv_window == 100_000 - 20_005 and h2.recv_unreturned == 20_005
    {h2, actions} = recv(h2, [data(id, :binary.copy("a", 5_000))])
    assert {:window_update, 0, 25_010} in written(actions)
    assert h2.recv_window == 100_000 and h2.recv_unreturned == 0
  end

  test "data beyond the connection window is a FLOW_CONTROL_ERROR; on an unknown stream it still counts" do
    h2 = new(connection_window_size: 65_535, max_frame_size: 100_000)
    {h2, []} = recv(h2, [{:data, 7, :binary.copy("a", 16_000), false}])
    assert h2.recv_window == 65_535 - 16_000

    frames = [{:data, 7, :binary.copy("a", 50_000), false}]

    assert {:error, :connection_window_exceeded, _h2, actions} =
             H2.receive_bytes(h2, bytes(frames))

    assert [{:goaway, 0, 3, _}] = written(actions)
  end

  test "data beyond a stream's window resets it with FLOW_CONTROL_ERROR" do
    {h2, call, id} = started(new(initial_window_size: 16_384), kind: :stream)
    {h2, _} = recv(h2, [{:data, id, grpc(:binary.copy("a", 16_379)), false}])
    {h2, actions} = recv(h2, [{:data, id, "a", false}])
    assert [{:rst_stream, ^id, 3}] = written(actions)

    assert {:send, _,
            {:krait_stream, ref, {:done, {:error, %Error{message: "server exceeded" <> _}}}}} =
             List.last(others(actions))

    assert ref == call.ref and h2.streams == %{}
  end

  test "a compressed message resets the stream" do
    {h2, _call, id} = started(new(), kind: :stream)
    {_h2, actions} = recv(h2, [{:data, id, <<1, 0, 0, 0, 1, "x">>, false}])
    assert [{:rst_stream, ^id, 8}] = written(actions)

    assert {:send, _,
            {:krait_stream, _,
             {:done, {:error, %Error{message: "server sent a compressed" <> _}}}}} =
             List.last(others(actions))
  end

  test "unary: received bytes are returned at once (batched by a quarter window)" do
    {h2, _call, id} = started(new(initial_window_size: 40_000))
    {_h2, actions} = recv(h2, [data(id, :binary.copy("a", 12_000))])
    assert written(actions) == [{:window_update, id, 12_005}]
  end

  ## Sending and the server's windows

  test "a request larger than the server's windows waits for WINDOW_UPDATE (stream, connection)" do
    request = :binary.copy("r", 100_000)
    {h2, _call, actions} = open(new(), request: request)
    assert [{:headers, 1, _, _, _} | data] = written(actions)

    assert data |> Enum.map(fn {:data, 1, d, false, _} -> byte_size(d) end) |> Enum.sum() ==
             65_535

    assert h2.send_window == 0

    # The stream's window alone is not enough: the connection's is empty too.
    {h2, []} = recv(h2, [{:window_update, 1, 100_000}])
    {h2, actions} = recv(h2, [{:window_update, 0, 50_000}])

    assert [{:data, 1, a, false, _}, {:data, 1, b, false, _}, {:data, 1, c, true, _}] =
             written(actions)

    assert byte_size(a) == 16_384 and byte_size(b) == 16_384
    assert byte_size(c) == 100_005 - 65_535 - 2 * 16_384
    assert h2.send_window == 50_000 - (100_005 - 65_535)
  end

  test "a window update for an unknown stream is ignored; one overflowing the connection is an error" do
    h2 = new()
    assert {^h2, []} = recv(h2, [{:window_update, 5, 10}])

    {:error, :connection_window_overflow, _, actions} =
      H2.receive_bytes(h2, bytes([{:window_update, 0, 2_147_483_647}]))

    assert [{:goaway, 0, 3, _}] = written(actions)
  end

  test "SETTINGS: acknowledged; the initial window shifts open streams; frame size and limits applied" do
    {h2, call, _} = open(new(), request: :binary.copy("r", 70_000))
    assert h2.send_window == 0

    {h2, actions} =
      recv(h2, [
        {:window_update, 0, 100_000},
        {:settings, false, [{4, 65_535 + 10}, {5, 20_000}, {3, 5}, {99, 1}]}
      ])

    assert [{:settings, true, []}, {:data, 1, d, false, _}] = written(actions)
    assert byte_size(d) == 10
    assert h2.peer_max_frame_size == 20_000 and h2.peer_max_streams == 5
    assert H2.lookup_ref(h2, call.ref).send_window == 0

    # A lower initial window takes the open stream's window below zero.
    {h2, _} = recv(h2, [{:settings, false, [{4, 0}]}])
    assert H2.lookup_ref(h2, call.ref).send_window == -65_545
    assert {^h2, []} = recv(h2, [{:settings, true, []}])
  end

  test "SETTINGS errors: a window too large, a bad frame size" do
    assert {:error, :initial_window_too_large, _, actions} =
             H2.receive_bytes(new(), bytes([{:settings, false, [{4, 2_147_483_648}]}]))

    assert [{:goaway, 0, 3, _}] = written(actions)

    assert {:error, :bad_max_frame_size, _, actions} =
             H2.receive_bytes(new(), bytes([{:settings, false, [{5, 100}]}]))

    assert [{:goaway, 0, 1, _}] = written(actions)
  end

  test "SETTINGS_HEADER_TABLE_SIZE resizes the encoder (bounded by ours)" do
    h2 = new()
    {h2, _} = recv(h2, [{:settings, false, [{1, 4096}]}])
    assert h2.encoder == new().encoder
    {h2, _} = recv(h2, [{:settings, false, [{1, 100}]}])
    assert h2.encoder.max_size == 100
    {h2, _} = recv(h2, [{:settings, false, [{1, 1_000_000}]}])
    assert h2.encoder.max_size == 4096
  end

  test "PING is answered, a PING ack ignored; PRIORITY and unknown frames ignored" do
    h2 = new()
    {h2, actions} = recv(h2, [{:ping, false, "abcdefgh"}])
    assert written(actions) == [{:ping, true, "abcdefgh"}]
    assert {^h2, []} = recv(h2, [{:ping, true, "abcdefgh"}, {:priority, 1}])
    unknown = <<0::24, 0xFA, 0, 0::32>>
    assert {:ok, ^h2, []} = H2.receive_bytes(h2, unknown)
  end

  test "PUSH_PROMISE and a stray CONTINUATION are protocol errors" do
    push = <<4::24, 5, 4, 1::32, 2::32>>
    assert {:error, :push_promise_while_disabled, _, actions} = H2.receive_bytes(new(), push)
    assert [{:goaway, 0, 1, _}] = written(actions)

    assert {:error, :unexpected_continuation, _, _} =
             H2.receive_bytes(new(), bytes([{:continuation, 1, "x", true}]))
  end

  test "a frame larger than our max frame size is a FRAME_SIZE_ERROR" do
    assert {:error, {:frame_too_large, 16_385}, _, actions} =
             H2.receive_bytes(new(), bytes([{:data, 1, :binary.copy("a", 16_385), false}]))

    assert [{:goaway, 0, 6, _}] = written(actions)
  end

  test "a malformed frame is a PROTOCOL_ERROR" do
    assert {:error, :data_on_stream_0, _, actions} =
             H2.receive_bytes(new(), bytes([{:data, 0, "a", false}]))

    assert [{:goaway, 0, 1, _}] = written(actions)
  end

  ## Receiving in pieces

  test "frames split anywhere: a header cut short, a payload in pieces, several frames at once" do
    {h2, call, id} = started(new(), kind: :stream)
    all = bytes([data(id, "hello"), data(id, "world"), trailers(id, 0)])

    {h2, acts} =
      for <<byte <- all>>, reduce: {h2, []} do
        {h2, acts} ->
          {:ok, h2, actions} = H2.receive_bytes(h2, <<byte>>)
          {h2, acts ++ actions}
      end

    ref = call.ref

    assert [
             {:send, _, {:krait_stream, ^ref, {:messages, ["hello"], 10}}},
             {:send, _, {:krait_stream, ^ref, {:messages, ["world"], 10}}},
             {:demonitor, _},
             {:send, _, {:krait_stream, ^ref, {:done, :ok}}}
           ] = acts

    assert h2.buffer == <<>>
  end

  test "a large frame received in pieces is joined once complete, the rest decoded in place" do
    {h2, call, id} = started(new(), kind: :stream)
    payload = :binary.copy("z", 10_000)
    all = bytes([data(id, payload), data(id, "tail")])
    <<a::binary-size(100), b::binary-size(5000), c::binary>> = all
    {:ok, h2, []} = H2.receive_bytes(h2, a)
    assert {:partial, 10_014, _, 100} = h2.buffer
    {:ok, h2, []} = H2.receive_bytes(h2, b)
    {:ok, h2, actions} = H2.receive_bytes(h2, c)
    ref = call.ref

    assert [
             {:send, _, {:krait_stream, ^ref, {:messages, [^payload], _}}},
             {:send, _, {:krait_stream, ^ref, {:messages, ["tail"], _}}}
           ] = actions

    assert h2.buffer == <<>>
  end

  test "header blocks in CONTINUATION; any other frame inside a block is a protocol error" do
    {h2, _call, _} = open(new())
    block = block([{":status", "200"}, {"content-type", "application/grpc"}])
    <<a::binary-size(3), b::binary-size(3), c::binary>> = block

    {h2, []} =
      recv(h2, [
        {:headers, 1, a, false, false},
        {:continuation, 1, b, false},
        {:continuation, 1, c, true}
      ])

    assert h2.continuation == nil
    assert hd(Map.values(h2.streams)).http_status == 200

    {h2, _} = recv(h2, [{:headers, 1, a, true, false}])

    assert {:error, :expected_continuation, _, actions} =
             H2.receive_bytes(h2, bytes([{:ping, false, "12345678"}]))

    assert [{:goaway, 0, 1, _}] = written(actions)

    assert {:error, :expected_continuation, _, _} =
             H2.receive_bytes(h2, bytes([{:continuation, 3, "x", true}]))
  end

  ## Ending calls

  test "cancel: RST_STREAM(CANCEL), nothing for the owner; unknown refs ignored" do
    {h2, call, id} = started(new(), kind: :stream, timer: timer = make_ref())
    {h2, actions} = H2.cancel(h2, call.ref)
    assert others(actions) == [{:cancel_timer, timer}, {:demonitor, call.monitor}]
    assert written(actions) == [{:rst_stream, id, 8}]
    assert h2.streams == %{}
    assert H2.cancel(h2, call.ref) == {h2, []}
  end

  test "owner_down: the call is reset silently; unknown monitors ignored" do
    {h2, call, id} = started(new(), kind: :stream)
    {h2, actions} = H2.owner_down(h2, call.monitor)
    assert others(actions) == [{:demonitor, call.monitor}]
    assert written(actions) == [{:rst_stream, id, 8}]
    assert H2.owner_down(h2, call.monitor) == {h2, []}
  end

  test "deadline: the call fails with DEADLINE_EXCEEDED and is reset" do
    {h2, call, id} = started(new(), timer: timer = make_ref())
    {h2, actions} = H2.deadline(h2, call.ref)

    assert others(actions) == [
             {:cancel_timer, timer},
             {:demonitor, call.monitor},
             {:reply, call.from, {:error, Error.deadline_exceeded()}}
           ]

    assert written(actions) == [{:rst_stream, id, 8}]
    assert H2.deadline(h2, call.ref) == {h2, []}
  end

  test "RST_STREAM from the server fails the call; unknown streams ignored" do
    {h2, call, id} = started(new(), kind: :stream)
    {h2, actions} = recv(h2, [{:rst_stream, id, 7}])
    ref = call.ref

    assert [
             {:demonitor, _},
             {:send, _, {:krait_stream, ^ref, {:done, {:error, %Error{status: 14}}}}}
           ] = actions

    assert {^h2, []} = recv(h2, [{:rst_stream, id, 7}])
  end

  test "a response that ends with request bytes still queued resets our side" do
    {h2, _call, _} = open(new(), request: :binary.copy("r", 100_000))

    {_h2, actions} =
      recv(h2, [{:headers, 1, block([{":status", "200"}, {"grpc-status", "0"}]), true, true}])

    assert written(actions) == [{:rst_stream, 1, 8}]
  end

  test "fail_all: calls without response headers are unprocessed, the others not" do
    {h2, a, _} = open(new())
    {h2, b, _id} = started(h2, kind: :stream)
    {h2, actions} = H2.fail_all(h2, Error.unavailable("connection lost"))
    assert written(actions) == []
    from = a.from

    assert Enum.any?(
             actions,
             &match?({:reply, ^from, {:error, %Error{status: 14, unprocessed: true}}}, &1)
           )

    ref = b.ref

    assert Enum.any?(
             actions,
             &match?(
               {:send, _, {:krait_stream, ^ref, {:done, {:error, %Error{unprocessed: false}}}}},
               &1
             )
           )

    assert h2.streams == %{}
  end

  test "close: GOAWAY(NO_ERROR) and every call fails" do
    {h2, call, _} = open(new())
    {h2, actions} = H2.close(h2)
    assert [{:goaway, 0, 0, "closing"}] = written(actions)
    from = call.from

    assert Enum.any?(
             actions,
             &match?(
               {:reply, ^from, {:error, %Error{message: "connection closed by the client"}}},
               &1
             )
           )

    assert h2.streams == %{}
  end

  ## GOAWAY and draining

  test "GOAWAY: calls above the last id fail unprocessed, the others finish, then the connection is drained" do
    {h2, a, _} = started(new(), kind: :stream)
    {h2, b, _} = started(h2, kind: :stream)
    refute H2.draining?(h2)
    {h2, actions} = recv(h2, [{:goaway, 1, 0, "bye"}])
    ref_b = b.ref

    assert [{:demonitor, _}, {:send, _, {:krait_stream, ^ref_b, {:done, {:error, error}}}}] =
             actions

    assert %Error{
             status: 14,
             unprocessed: true,
             message: "connection going away (GOAWAY code 0: bye)"
           } = error

    assert H2.draining?(h2) and not H2.drained?(h2)
    assert H2.lookup_ref(h2, a.ref)

    {h2, actions} = recv(h2, [trailers(1, 0)])
    assert [{:demonitor, _}, {:send, _, {:krait_stream, _, {:done, :ok}}}] = actions
    assert H2.drained?(h2)
  end

  test "GOAWAY without debug data" do
    {h2, _, _} = started(new(), kind: :stream)
    {_h2, actions} = recv(h2, [{:goaway, 0, 2, ""}])

    assert {:send, _,
            {:krait_stream, _,
             {:done, {:error, %Error{message: "connection going away (GOAWAY code 2)"}}}}} =
             List.last(others(actions))
  end

  ## Duplex

  defp response(num, payload), do: IO.iodata_to_binary(Wire.delimited(num, payload))

  test "duplex: output to the owner, credit to the input owner, handler calls to the owner, in order" do
    input_owner = spawn(fn -> :ok end)
    {h2, call, id} = started(new(), kind: :stream, duplex: true, input_owner: input_owner)
    credit = response(3, [Wire.field(1, :uint64, 4), Wire.field(2, :uint64, 100)])

    frames = [
      response(1, "c1"),
      response(1, "c2"),
      credit,
      response(4, "hc"),
      response(2, "res"),
      response(9, "x")
    ]

    {h2, actions} = recv(h2, [{:data, id, Enum.map_join(frames, &grpc/1), false}])
    ref = call.ref
    me = self()

    assert [
             {:send, ^me, {:krait_stream, ^ref, {:messages, ["c1", "c2"], out_bytes}}},
             {:send, ^input_owner, {:krait_stream, ^ref, {:credit, 4, 100}}},
             {:send, ^me, {:krait_stream, ^ref, {:handler_call, "hc"}}},
             {:send, ^me, {:krait_stream, ^ref, {:messages, ["res"], res_bytes}}}
           ] = actions

    assert out_bytes == 2 * (byte_size(response(1, "c1")) + 5)
    assert res_bytes == byte_size(response(2, "res")) + 5
    # Credit, handler calls and empty messages are acknowledged by the connection itself.
    assert H2.lookup_ref(h2, ref).unacked == out_bytes + res_bytes
  end

  test "duplex: request messages are sent in order; ignored for plain calls and unknown refs" do
    {h2, call, _id} = started(new(), kind: :stream, duplex: true)
    {h2, actions} = H2.send_request(h2, call.ref, Duplex.input_end(:ok))
    assert [{:data, 1, _, false, _}] = written(actions)
    assert H2.send_request(h2, make_ref(), "x") == {h2, []}

    {h2, plain, _} = started(h2, kind: :stream)
    assert H2.send_request(h2, plain.ref, "x") == {h2, []}
  end

  test "duplex: the response's end half-closes our open request side" do
    {h2, _call, id} = started(new(), kind: :stream, duplex: true)
    {_h2, actions} = recv(h2, [trailers(id, 0)])
    assert written(actions) == [{:data, id, "", true, 0}]
  end

  test "duplex: a malformed response resets the stream after delivering the output before it" do
    {h2, _call, id} = started(new(), kind: :stream, duplex: true)
    # field 3 (credit) as a varint: malformed
    bad = <<0x18, 1>>
    {_h2, actions} = recv(h2, [{:data, id, grpc(response(1, "ok")) <> grpc(bad), false}])

    assert [
             {:send, _, {:krait_stream, _, {:messages, ["ok"], _}}},
             {:demonitor, _},
             {:send, _, {:krait_stream, _, {:done, {:error, error}}}}
           ] = others(actions)

    assert error.message =~ "malformed DuplexResponse"
    assert written(actions) == [{:rst_stream, id, 8}]
  end
end
