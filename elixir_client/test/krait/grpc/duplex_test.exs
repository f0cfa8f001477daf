defmodule Krait.GRPC.DuplexTest.Helpers do
  @moduledoc """
  Wire helpers of the `ExecuteToolDuplex` tests: `InputBatch`, `HandlerReply` and
  `DuplexResponse` encoders, `HandlerCall` and `DuplexRequest` decoders (written with
  `Krait.Proto.Wire`, so the tests do not lean on the code under test).
  """

  alias Krait.Proto.Wire

  @doc "An encoded `InputBatch` of JSON items (each a term) or `{data, content_type}` items."
  @spec batch([term]) :: iodata
  def batch(items) do
    for item <- items do
      {data, type} =
        case item do
          {data, type} when is_binary(data) -> {data, type}
          term -> {:jiffy.encode(term), ""}
        end

      Wire.delimited(1, [Wire.field(1, :bytes, data), Wire.field(2, :string, type)])
    end
  end

  @doc "An encoded `HandlerReply` with a JSON value."
  @spec reply(non_neg_integer, term) :: iodata
  def reply(id, value),
    do: [Wire.field(1, :uint64, id), Wire.field(2, :bytes, :jiffy.encode(value))]

  @doc "Decodes a `HandlerCall` to a map."
  @spec handler_call(binary) :: map
  def handler_call(bin), do: fields(bin, %{id: 0, name: "", args_json: "", timeout_ms: 0})

  defp fields(<<>>, acc), do: acc

  defp fields(bin, acc) do
    {num, raw, rest} = Wire.decode_field(bin)

    acc =
      case num do
        1 -> %{acc | id: Wire.scalar(raw, :uint64)}
        2 -> %{acc | name: Wire.scalar(raw, :string)}
        3 -> %{acc | args_json: Wire.scalar(raw, :string)}
        4 -> %{acc | timeout_ms: Wire.scalar(raw, :uint64)}
        _ -> acc
      end

    fields(rest, acc)
  end

  @doc "An encoded `DuplexResponse` with field `num` holding `payload`."
  @spec response(pos_integer, iodata) :: binary
  def response(num, payload), do: IO.iodata_to_binary(Wire.delimited(num, payload))

  @doc "An encoded `InputCredit`."
  @spec credit(non_neg_integer, non_neg_integer) :: binary
  def credit(items, bytes),
    do: response(3, [Wire.field(1, :uint64, items), Wire.field(2, :uint64, bytes)])

  @doc "Decodes a `DuplexRequest`: `{field_number, payload}`."
  @spec request(binary) :: {pos_integer, binary}
  def request(bin) do
    {num, {:bytes, payload}, <<>>} = Wire.decode_field(bin)
    {num, payload}
  end
end

defmodule Krait.GRPC.DuplexProtocolTest do
  @moduledoc """
  The duplex side of `Krait.GRPC.Connection` against a scripted HTTP/2 server: what goes on
  the wire (no END_STREAM while the call runs, messages in order, HTTP/2 windows respected),
  how each `DuplexResponse` is routed, and how the call ends (trailers with or without
  RST_STREAM(NO_ERROR), cancel, a malformed response).
  """
  use ExUnit.Case, async: true

  import Krait.GRPC.DuplexTest.Helpers
  alias Krait.GRPC.{Connection, Error, HPACK, MessageBuffer}
  alias Krait.Proto.Wire
  alias Krait.Test.FakeH2Server, as: Server

  @moduletag timeout: 15_000

  @path "/krait.v1.ToolWorker/ExecuteToolDuplex"

  defp setup_pair(settings \\ [], conn_opts \\ []) do
    {conn, server, _client} = Server.pair(settings, conn_opts)
    {conn, server}
  end

  # Opens a duplex call and reads its headers; returns the stream id.
  defp open(conn, server, opts \\ []) do
    {:ok, ref} = Connection.start_stream(conn, @path, "req", [duplex: true] ++ opts)

    {{:headers, id, block, false, true}, _, server} =
      Server.recv_until(server, &match?({:headers, _, _, _, _}, &1))

    {:ok, headers, decoder} = HPACK.decode(block, server.decoder)
    assert {":path", @path} in headers
    {ref, id, %{server | decoder: decoder}}
  end

  # Reads DATA frames of stream `id` until `count` gRPC messages are complete. Fails on
  # END_STREAM; frames never exceed the default maximum frame size.
  defp recv_messages(server, id, count, buffer \\ MessageBuffer.new(), acc \\ []) do
    if length(acc) >= count do
      {acc, server}
    else
      {{:data, ^id, data, end?, _}, _, server} =
        Server.recv_until(server, &match?({:data, ^id, _, _, _}, &1))

      refute end?, "the client half-closed a running duplex call"
      assert byte_size(data) <= 16_384
      {:ok, messages, _, buffer} = MessageBuffer.push(buffer, data)
      recv_messages(server, id, count, buffer, acc ++ messages)
    end
  end

  # Reads frames for `ms` milliseconds and fails if one matches `fun`.
  defp refute_frame(server, fun, ms \\ 200) do
    deadline = System.monotonic_time(:millisecond) + ms
    refute_frame_until(server, fun, deadline)
  end

  defp refute_frame_until(server, fun, deadline) do
    case Server.recv(server, max(deadline - System.monotonic_time(:millisecond), 0)) do
      {{:closed, :timeout}, server} ->
        server

      {frame, server} ->
        refute fun.(frame), "unexpected frame #{inspect(frame)}"
        refute_frame_until(server, fun, deadline)
    end
  end

  # Sends gRPC messages back to back, cut into DATA frames of at most 16 KiB (so a few small
  # messages share one frame and reach the client together).
  defp send_messages(server, id, messages) do
    bytes = IO.iodata_to_binary(Enum.map(messages, &Server.grpc_message/1))
    Server.send_frames(server, for(piece <- pieces(bytes), do: {:data, id, piece, false}))
  end

  defp pieces(<<piece::binary-size(16_384), rest::binary>>) when rest != "",
    do: [piece | pieces(rest)]

  defp pieces(rest), do: [rest]

  test "the request side carries start, input, input_end and handler replies, in order, and stays open" do
    {conn, server} = setup_pair()
    {ref, id, server} = open(conn, server)

    :ok = Connection.send_input(conn, ref, batch([%{"i" => 1}, %{"i" => 2}]), 16)
    :ok = Connection.end_input(conn, ref, :ok)
    :ok = Connection.handler_reply(conn, ref, reply(7, 42))
    :ok = Connection.end_input(conn, ref, {:error, "enumerable raised"})

    {messages, server} = recv_messages(server, id, 5)

    assert [{1, "req"}, {2, batch}, {3, ""}, {4, reply}, {3, failed}] =
             Enum.map(messages, &request/1)

    assert batch == IO.iodata_to_binary(batch([%{"i" => 1}, %{"i" => 2}]))
    assert reply == IO.iodata_to_binary(reply(7, 42))
    assert failed == IO.iodata_to_binary([<<8, 2>>, Wire.field(2, :string, "enumerable raised")])

    # Nothing ends the request side while the call runs.
    server = refute_frame(server, &match?({:data, ^id, _, true, _}, &1))

    server = Server.send_response_headers(server, id)
    Server.send_trailers(server, id, 0)
    assert_receive {:krait_stream, ^ref, {:done, :ok}}, 2000
    # Once the response has ended, the request side is closed gracefully.
    {_, _, _} = Server.recv_until(server, &(&1 == {:data, id, "", true, 0}))
  end

  test "each DuplexResponse goes where it belongs, in order, payloads unwrapped" do
    {conn, server} = setup_pair()
    input_owner = self()
    owner = spawn_link(fn -> forward_all(input_owner) end)
    {ref, id, server} = open(conn, server, owner: owner, input_owner: input_owner)
    {_, server} = recv_messages(server, id, 1)
    server = Server.send_response_headers(server, id)

    send_messages(server, id, [
      credit(1024, 4_194_304),
      response(1, "batch-1"),
      response(1, "batch-2"),
      response(4, "call-1"),
      response(3, ""),
      response(1, "batch-3"),
      response(2, "result"),
      # no field set / an unknown field: nothing is delivered
      "",
      response(9, "future")
    ])

    Server.send_trailers(server, id, 0)

    assert_receive {:krait_stream, ^ref, {:credit, 1024, 4_194_304}}, 2000
    assert_receive {:krait_stream, ^ref, {:credit, 0, 0}}, 2000

    # what the owner acks: the whole DuplexResponse messages, with their 5-octet prefixes
    first = byte_size(response(1, "batch-1")) + byte_size(response(1, "batch-2")) + 10
    second = byte_size(response(1, "batch-3")) + byte_size(response(2, "result")) + 10

    assert_receive {:forwarded,
                    [
                      {:krait_stream, ^ref, {:messages, ["batch-1", "batch-2"], ^first}},
                      {:krait_stream, ^ref, {:handler_call, "call-1"}},
                      {:krait_stream, ^ref, {:messages, ["batch-3", "result"], ^second}},
                      {:krait_stream, ^ref, {:done, :ok}}
                    ]},
                   2000

    refute_received {:krait_stream, ^ref, _}
  end

  defp forward_all(to, acc \\ []) do
    receive do
      {:krait_stream, _, {:done, _}} = done -> send(to, {:forwarded, Enum.reverse([done | acc])})
      message -> forward_all(to, [message | acc])
    end
  end

  test "credit and handler calls are acknowledged by the connection, output by the owner" do
    {conn, server} = setup_pair([], initial_window_size: 65_536)
    {ref, id, server} = open(conn, server)
    {_, server} = recv_messages(server, id, 1)
    server = Server.send_response_headers(server, id)
    call = :binary.copy("a", 20_000)
    send_messages(server, id, [response(4, call)])
    assert_receive {:krait_stream, ^ref, {:handler_call, ^call}}, 2000
    # More than a quarter of the window, never acked by the owner: returned at once.
    {frame, _, server} = Server.recv_until(server, &match?({:window_update, ^id, _}, &1))
    assert {:window_update, ^id, n} = frame
    assert n == byte_size(response(4, call)) + 5

    output = :binary.copy("o", 20_000)
    send_messages(server, id, [response(1, output)])
    assert_receive {:krait_stream, ^ref, {:messages, [^output], bytes}}, 2000
    server = refute_frame(server, &match?({:window_update, ^id, _}, &1))
    Connection.ack(conn, ref, bytes)

    {{:window_update, ^id, ^bytes}, _, server} =
      Server.recv_until(server, &match?({:window_update, ^id, _}, &1))

    Server.send_trailers(server, id, 0)
    assert_receive {:krait_stream, ^ref, {:done, :ok}}, 2000
  end

  test "input larger than the HTTP/2 windows waits for WINDOW_UPDATEs" do
    {conn, server} = setup_pair([{4, 1000}])
    {ref, id, server} = open(conn, server)
    {_, server} = recv_messages(server, id, 1)
    items = for i <- 1..3, do: {:binary.copy(<<i>>, 40_000), "application/octet-stream"}
    for item <- items, do: Connection.send_input(conn, ref, batch([item]), 40_000)

    # The stream window (1000, less the start message) is all that goes.
    {{:data, ^id, data, false, _}, _, server} =
      Server.recv_until(server, &match?({:data, ^id, _, _, _}, &1))

    assert byte_size(data) ==
             1000 - byte_size(Server.grpc_message(IO.iodata_to_binary(Wire.delimited(1, "req"))))

    server = refute_frame(server, &match?({:data, _, _, _, _}, &1))

    # Then the connection window (65535) is the limit, then everything flows.
    Server.send_frames(server, [{:window_update, id, 1_000_000}])
    {first, buffer, server} = recv_bytes(server, id, 65_535 - 1000, buffer_after(data))
    server = refute_frame(server, &match?({:data, _, _, _, _}, &1))
    Server.send_frames(server, [{:window_update, 0, 1_000_000}])

    {messages, server} = recv_messages(server, id, 3, buffer, first)

    assert Enum.map(messages, &request/1) ==
             for(i <- items, do: {2, IO.iodata_to_binary(batch([i]))})

    server = Server.send_response_headers(server, id)
    Server.send_trailers(server, id, 0)
    assert_receive {:krait_stream, ^ref, {:done, :ok}}, 2000
    {_, _, _} = Server.recv_until(server, &(&1 == {:data, id, "", true, 0}))
  end

  # Reads `count` octets of DATA of stream `id` into a message buffer; returns the messages
  # completed too.
  defp recv_bytes(server, id, count, buffer, acc \\ [])

  defp recv_bytes(server, id, count, buffer, acc) when count > 0 do
    {{:data, ^id, data, false, _}, _, server} =
      Server.recv_until(server, &match?({:data, ^id, _, _, _}, &1))

    {:ok, messages, _, buffer} = MessageBuffer.push(buffer, data)
    recv_bytes(server, id, count - byte_size(data), buffer, acc ++ messages)
  end

  defp recv_bytes(server, _id, 0, buffer, acc), do: {acc, buffer, server}

  # A message buffer that has seen the start message and the first piece of input.
  defp buffer_after(data) do
    start = Server.grpc_message(IO.iodata_to_binary(Wire.delimited(1, "req")))
    {:ok, [_], _, buffer} = MessageBuffer.push(MessageBuffer.new(), start)
    {:ok, [], _, buffer} = MessageBuffer.push(buffer, data)
    buffer
  end

  test "trailers and RST_STREAM(NO_ERROR) on a call never half-closed end it cleanly" do
    {conn, server} = setup_pair()
    {ref, id, server} = open(conn, server)
    {_, server} = recv_messages(server, id, 1)
    server = Server.send_response_headers(server, id)
    send_messages(server, id, [response(2, "value")])
    server = Server.send_trailers(server, id, 0)
    Server.send_frames(server, [{:rst_stream, id, 0}])
    assert_receive {:krait_stream, ^ref, {:messages, ["value"], 12}}, 2000
    assert_receive {:krait_stream, ^ref, {:done, :ok}}, 2000
    # Input sent after the end goes nowhere.
    :ok = Connection.send_input(conn, ref, batch([1]), 1)
    refute_frame(server, &match?({:data, ^id, data, _, _} when data != "", &1))
    assert elem(:sys.get_state(conn), 1).streams == %{}
  end

  test "a call ending while input is still queued resets the request side" do
    {conn, server} = setup_pair([{4, 100}])
    {ref, id, server} = open(conn, server)

    Connection.send_input(
      conn,
      ref,
      batch([{:binary.copy("x", 5000), "application/octet-stream"}]),
      5000
    )

    {{:data, ^id, _, false, _}, _, server} =
      Server.recv_until(server, &match?({:data, ^id, _, _, _}, &1))

    server = Server.send_response_headers(server, id)
    Server.send_trailers(server, id, 3, [{"grpc-message", "bad%20item"}])

    assert_receive {:krait_stream, ^ref,
                    {:done, {:error, %Error{status: 3, message: "bad item"}}}},
                   2000

    {_, _, _} = Server.recv_until(server, &(&1 == {:rst_stream, id, 8}))
  end

  test "cancel mid-input resets the stream; later input is dropped" do
    {conn, server} = setup_pair()
    {ref, id, server} = open(conn, server)
    Connection.send_input(conn, ref, batch([1, 2]), 2)
    {_, server} = recv_messages(server, id, 2)
    :ok = Connection.cancel(conn, ref, :cancelled)
    {_, _, server} = Server.recv_until(server, &(&1 == {:rst_stream, id, 8}))
    Connection.send_input(conn, ref, batch([3]), 1)
    Connection.end_input(conn, ref, :ok)
    refute_frame(server, &match?({:data, ^id, _, _, _}, &1))
    refute_received {:krait_stream, ^ref, _}
  end

  test "a malformed DuplexResponse fails the call with INTERNAL" do
    {conn, server} = setup_pair()
    {ref, id, server} = open(conn, server)
    {_, server} = recv_messages(server, id, 1)
    server = Server.send_response_headers(server, id)
    # field 1 as a varint: not a message
    send_messages(server, id, [<<8, 1>>])
    assert_receive {:krait_stream, ^ref, {:done, {:error, %Error{status: 13, message: m}}}}, 2000
    assert m =~ "DuplexResponse"
    {_, _, _} = Server.recv_until(server, &(&1 == {:rst_stream, id, 8}))
  end

  test "duplex: and input_owner: are checked" do
    {conn, _server} = setup_pair()

    assert_raise ArgumentError, ~r/input_owner/, fn ->
      Connection.start_stream(conn, @path, "req", duplex: true, input_owner: :nobody)
    end
  end
end

defmodule Krait.GRPC.DuplexTest do
  @moduledoc """
  `ExecuteToolDuplex` from `Krait.GRPC.Connection` against a real Python worker serving gRPC:
  input sent within the worker's credit and echoed back, input far larger than the HTTP/2
  windows, cancel mid-input (the tool's `finally` runs), the end of input as an error, and a
  handler call answered while the tool waits.
  """
  use ExUnit.Case, async: true

  import Krait.GRPC.DuplexTest.Helpers
  import Krait.TestHelpers, only: [eventually: 1]
  alias Krait.GRPC.Connection
  alias Krait.Proto
  alias Krait.Proto.{ExecuteToolRequest, ExecuteToolResponse, ToolChunkBatch}
  alias Krait.Test.PythonWorker

  @moduletag :integration
  @moduletag timeout: 60_000
  unless PythonWorker.available?(), do: @moduletag(skip: "the Python worker is not installed")

  @path "/krait.v1.ToolWorker/ExecuteToolDuplex"

  setup_all do
    worker = PythonWorker.start(args: ["--max-calls", "100"])
    on_exit(fn -> PythonWorker.stop(worker) end)
    {:ok, worker: worker}
  end

  setup %{worker: worker} do
    spec = {Connection, port: worker.tcp_port}
    conn = start_supervised!(Supervisor.child_spec(spec, id: make_ref(), restart: :temporary))
    {:ok, conn: conn}
  end

  defp request(tool, args) do
    ExecuteToolRequest.encode(%ExecuteToolRequest{tool_name: tool, args_json: :jiffy.encode(args)})
  end

  defp duplex(conn, tool, args, opts \\ []) do
    Connection.start_stream(
      conn,
      @path,
      request(tool, args),
      [duplex: true, timeout: 30_000] ++ opts
    )
  end

  defp json(data), do: :jiffy.decode(data, [:return_maps])

  defp events(conn, tag) do
    {:ok, bin} =
      Connection.unary(conn, Proto.path(:execute_tool), request("stream_events", %{tag: tag}))

    json(ExecuteToolResponse.decode(bin).data)
  end

  # Runs a call to its end: sends `items` (each `{item, data_bytes}`) as credit allows, one
  # item per batch, ends the input after the last, answers handler calls with `handler`.
  # Returns the output payloads, the outcome and the most input credit ever outstanding.
  defp run(conn, ref, items, handler \\ fn _ -> flunk("unexpected handler call") end) do
    loop(conn, ref, %{items: items, credit: {0, 0}, ended: false, handler: handler, out: []})
  end

  defp loop(conn, ref, state) do
    state = pump(conn, ref, state)

    receive do
      {:krait_stream, ^ref, {:credit, items, bytes}} ->
        {ci, cb} = state.credit
        loop(conn, ref, %{state | credit: {ci + items, cb + bytes}})

      {:krait_stream, ^ref, {:messages, messages, bytes}} ->
        Connection.ack(conn, ref, bytes)
        loop(conn, ref, %{state | out: state.out ++ messages})

      {:krait_stream, ^ref, {:handler_call, payload}} ->
        call = handler_call(payload)
        Connection.handler_reply(conn, ref, reply(call.id, state.handler.(call)))
        loop(conn, ref, state)

      {:krait_stream, ^ref, {:done, outcome}} ->
        {state.out, outcome}
    after
      30_000 -> flunk("call did not finish; state #{inspect(Map.delete(state, :items))}")
    end
  end

  defp pump(conn, ref, %{items: [], ended: false} = state) do
    Connection.end_input(conn, ref, :ok)
    %{state | ended: true}
  end

  defp pump(conn, ref, %{items: [{item, size} | rest], credit: {ci, cb}} = state)
       when ci > 0 and cb > 0 do
    Connection.send_input(conn, ref, batch([item]), size)
    pump(conn, ref, %{state | items: rest, credit: {ci - 1, cb - size}})
  end

  defp pump(_conn, _ref, state), do: state

  defp chunks(messages) do
    for m <- messages, c <- ToolChunkBatch.decode_chunks(m), c.data != "", do: json(c.data)
  end

  test "echo_input: items within credit come back as chunks, then :done", %{conn: conn} do
    {:ok, ref} = duplex(conn, "echo_input", %{})
    items = for i <- 1..200, do: {%{"i" => i}, 8}
    {messages, outcome} = run(conn, ref, items)
    assert outcome == :ok
    assert chunks(messages) == for(i <- 1..200, do: %{"i" => i})
    assert elem(:sys.get_state(conn), 1).streams == %{}
  end

  test "many 1 MiB items, far beyond the HTTP/2 windows and the credit window", %{conn: conn} do
    {:ok, ref} = duplex(conn, "bytes_input", %{})
    blob = :crypto.strong_rand_bytes(1_048_576)
    items = for _ <- 1..48, do: {{blob, "application/octet-stream"}, 1_048_576}
    {time, {[result], :ok}} = :timer.tc(fn -> run(conn, ref, items) end)
    assert json(ExecuteToolResponse.decode(result).data) == 48 * 1_048_576
    IO.puts("\n  duplex input of 1 MiB items: #{round(48 / (time / 1_000_000))} MiB/s")
  end

  test "cancel mid-input stops the tool; its finally runs", %{conn: conn} do
    tag = "duplex-cancel-#{System.unique_integer([:positive])}"
    {:ok, ref} = duplex(conn, "hold_input", %{tag: tag})
    assert_receive {:krait_stream, ^ref, {:credit, items, _}}, 10_000
    assert items > 3
    Connection.send_input(conn, ref, batch([1, 2, 3]), 3)
    assert_receive {:krait_stream, ^ref, {:messages, _, _}}, 10_000
    :ok = Connection.cancel(conn, ref, :cancelled)
    assert eventually(fn -> Map.has_key?(events(conn, tag), "finally") end)
    refute_received {:krait_stream, ^ref, {:done, _}}
  end

  test "input ended with an error: the tool's iterator raises InputError", %{conn: conn} do
    tag = "duplex-input-error-#{System.unique_integer([:positive])}"
    {:ok, ref} = duplex(conn, "take_input", %{n: 5, tag: tag})
    assert_receive {:krait_stream, ^ref, {:credit, _, _}}, 10_000
    Connection.send_input(conn, ref, batch([1]), 1)
    Connection.end_input(conn, ref, {:error, "the source failed"})
    assert_receive {:krait_stream, ^ref, {:done, _}}, 10_000
    assert eventually(fn -> Map.has_key?(events(conn, tag), "input_error") end)
  end

  test "a handler call answered with handler_reply: ask returns its value", %{conn: conn} do
    {:ok, ref} = duplex(conn, "ask", %{name: "double", args: %{x: 21}})

    handler = fn %{name: "double", args_json: args} -> 2 * json(args)["x"] end
    {[result], :ok} = run(conn, ref, [], handler)
    assert json(ExecuteToolResponse.decode(result).data) == 42
  end

  test "several handler calls of a streaming tool", %{conn: conn} do
    {:ok, ref} = duplex(conn, "ask_stream", %{name: "inc", count: 4})
    handler = fn %{name: "inc", args_json: args} -> json(args)["i"] + 100 end
    {messages, :ok} = run(conn, ref, [], handler)
    assert chunks(messages) == [100, 101, 102, 103]
  end
end
