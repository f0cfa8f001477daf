defmodule Krait.GRPC.ConnectionTest do
  @moduledoc """
  The channel against a real Krait Python worker (grpcio) on 127.0.0.1: unary and
  streaming calls, many streams on one connection, large messages, errors with status
  details, deadlines, cancellation, flow control with a slow owner, owner death.
  """
  use ExUnit.Case, async: true

  import Krait.TestHelpers, only: [eventually: 1]
  alias Krait.GRPC.{Connection, Error}
  alias Krait.Proto

  alias Krait.Proto.{
    Blob,
    ExecuteToolRequest,
    ExecuteToolResponse,
    ListToolsRequest,
    ListToolsResponse,
    PingRequest,
    PingResponse,
    ToolChunk,
    ToolChunkBatch
  }

  alias Krait.Test.PythonWorker

  @moduletag :integration
  @moduletag timeout: 30_000
  unless PythonWorker.available?(), do: @moduletag(skip: "the Python worker is not installed")

  setup_all do
    worker = PythonWorker.start(args: ["--max-calls", "100"])
    on_exit(fn -> PythonWorker.stop(worker) end)
    {:ok, worker: worker}
  end

  setup %{worker: worker} do
    {:ok, conn: connect(worker)}
  end

  defp connect(worker, opts \\ []) do
    spec = {Connection, Keyword.put(opts, :port, worker.tcp_port)}
    start_supervised!(Supervisor.child_spec(spec, id: make_ref(), restart: :temporary))
  end

  defp request(tool, args, extra \\ []) do
    ExecuteToolRequest.encode(
      struct!(%ExecuteToolRequest{tool_name: tool, args_json: :jiffy.encode(args)}, extra)
    )
  end

  defp execute(conn, tool, args, opts \\ [timeout: 10_000]) do
    case Connection.unary(conn, Proto.path(:execute_tool), request(tool, args), opts) do
      {:ok, bin} -> {:ok, ExecuteToolResponse.decode(bin)}
      error -> error
    end
  end

  defp json(data), do: :jiffy.decode(data, [:return_maps])

  # Receives a stream to its end, acknowledging each delivery; returns the payloads.
  defp collect(conn, ref, timeout \\ 10_000) do
    receive do
      {:krait_stream, ^ref, {:messages, messages, bytes}} ->
        Connection.ack(conn, ref, bytes)
        {rest, result} = collect(conn, ref, timeout)
        {messages ++ rest, result}

      {:krait_stream, ^ref, {:done, result}} ->
        {[], result}
    after
      timeout -> flunk("stream #{inspect(ref)} did not finish in #{timeout} ms")
    end
  end

  defp stream_tool(conn, tool, args, opts \\ [timeout: 10_000]) do
    Connection.start_stream(conn, Proto.path(:execute_streaming_tool), request(tool, args), opts)
  end

  defp events(conn, tag) do
    {:ok, %{data: data}} = execute(conn, "stream_events", %{tag: tag})
    json(data)
  end

  test "unary calls: Ping, ListTools, ExecuteTool", %{conn: conn} do
    ping = IO.iodata_to_binary(PingRequest.encode(%PingRequest{message: "hello"}))
    assert {:ok, bin} = Connection.unary(conn, Proto.path(:ping), ping, timeout: 5000)

    assert %PingResponse{message: "hello", adapter: "adapters.showcase:ShowcaseAdapter"} =
             PingResponse.decode(bin)

    assert {:ok, bin} =
             Connection.unary(
               conn,
               Proto.path(:list_tools),
               ListToolsRequest.encode(%ListToolsRequest{})
             )

    names = Enum.map(ListToolsResponse.decode(bin).tools, & &1.name)
    assert "stream_numbers" in names and "echo" in names

    assert {:ok, %ExecuteToolResponse{data: data, content_type: "application/json"}} =
             execute(conn, "add", %{a: 2, b: 3})

    assert json(data) == 5.0
  end

  test "a server stream delivers every chunk in order, then :done", %{conn: conn} do
    {:ok, ref} = stream_tool(conn, "stream_numbers", %{count: 50})
    {messages, :ok} = collect(conn, ref)
    chunks = Enum.map(messages, &ToolChunk.decode/1)
    assert Enum.map(chunks, & &1.seq) == Enum.to_list(0..50)
    assert json(hd(chunks).data) == %{"number" => 0, "is_last" => false}
    assert List.last(chunks).is_final
  end

  test "64 concurrent streams share one connection", %{conn: conn} do
    tasks =
      for i <- 1..64 do
        Task.async(fn ->
          {:ok, ref} = stream_tool(conn, "stream_numbers", %{count: 100 + i})
          {messages, result} = collect(conn, ref)
          {i, result, Enum.map(messages, &ToolChunk.decode(&1).seq)}
        end)
      end

    for {i, result, seqs} <- Task.await_many(tasks, 20_000) do
      assert result == :ok
      assert seqs == Enum.to_list(0..(100 + i))
    end

    assert elem(:sys.get_state(conn), 1).streams == %{}
  end

  test "5 MiB request and response", %{conn: conn} do
    blob = :crypto.strong_rand_bytes(5 * 1024 * 1024)

    req =
      request("reverse_bytes", %{},
        binary_args: %{"blob" => %Blob{data: blob, content_type: "application/octet-stream"}}
      )

    {time, result} =
      :timer.tc(fn -> Connection.unary(conn, Proto.path(:execute_tool), req, timeout: 10_000) end)

    assert {:ok, bin} = result
    %ExecuteToolResponse{data: data} = ExecuteToolResponse.decode(bin)
    assert data == blob |> :binary.bin_to_list() |> Enum.reverse() |> :binary.list_to_bin()
    IO.puts("\n  5 MiB up + 5 MiB down unary: #{round(10 / (time / 1_000_000))} MiB/s")
  end

  test "4 MiB messages stream fast", %{conn: conn} do
    {:ok, ref} = stream_tool(conn, "stream_arrays", %{batches: 24, batch_rows: 1024, cols: 1024})
    {time, {messages, :ok}} = :timer.tc(fn -> collect(conn, ref) end)
    chunks = Enum.map(messages, &ToolChunk.decode/1)
    arrays = Enum.filter(chunks, &(&1.content_type == "application/x-npy"))
    assert length(arrays) == 24
    assert Enum.all?(arrays, &(byte_size(&1.data) > 4 * 1024 * 1024))
    mib = Enum.reduce(messages, 0, &(&2 + byte_size(&1))) / 1_048_576
    IO.puts("\n  stream of 4 MiB messages: #{round(mib / (time / 1_000_000))} MiB/s")
  end

  test "the batched RPC: many chunks per message", %{conn: conn} do
    # enough small chunks for many batches and many HTTP/2 window updates (the chunks/s: the benchmarks)
    count = 20_000

    {:ok, ref} =
      Connection.start_stream(
        conn,
        Proto.path(:execute_streaming_tool_batched),
        request("stream_small", %{count: count}),
        timeout: 20_000
      )

    {messages, :ok} = collect(conn, ref, 20_000)
    chunks = Enum.flat_map(messages, &ToolChunkBatch.decode_chunks/1)
    assert length(chunks) == count + 1
    assert length(messages) < length(chunks)
    assert Enum.map(chunks, & &1.seq) == Enum.to_list(0..count)
    {data, [final]} = Enum.split(chunks, count)
    assert Enum.map(data, &json(&1.data)["i"]) == Enum.to_list(0..(count - 1))
    assert final.is_final and final.data == "" and final.metadata["synthetic_final"] == "true"
    refute Enum.any?(data, & &1.is_final)
  end

  test "a Trailers-Only error carries grpc-status-details-bin with the ToolError", %{conn: conn} do
    assert {:error, %Error{} = error} = execute(conn, "fail", %{message: "bad ü 100%"})
    assert error.status == 2
    assert error.message =~ "bad ü 100%"

    assert %Proto.ToolError{type: "ValueError", message: "bad ü 100%", tool_name: "fail"} =
             Proto.tool_error_from_status_details(error.details)

    assert error.trailers["grpc-status"] == "2"
  end

  test "an error after data arrives in trailers", %{conn: conn} do
    {:ok, ref} = stream_tool(conn, "failing_stream", %{fail_at: 3})
    {messages, {:error, %Error{} = error}} = collect(conn, ref)
    assert length(messages) == 3

    assert %Proto.ToolError{type: "ValueError", traceback: tb} =
             Proto.tool_error_from_status_details(error.details)

    assert tb =~ "Traceback"
  end

  # (trailers in CONTINUATION frames are tested against a fake server in connection_protocol_test)
  test "a huge error message arrives as the tool's error, clipped to fit the trailers", %{
    conn: conn
  } do
    message = String.duplicate("long error text ", 3000)
    assert {:error, %Error{status: 2} = error} = execute(conn, "fail", %{message: message})

    assert %Proto.ToolError{type: "ValueError", message: clipped} =
             Proto.tool_error_from_status_details(error.details)

    assert String.starts_with?(message, String.slice(clipped, 0, 100))
    assert byte_size(clipped) < byte_size(message)
  end

  test "a unary deadline ends the call with DEADLINE_EXCEEDED", %{conn: conn} do
    # ended by its deadline: long before the 20 s tool would end by itself
    {time, result} = :timer.tc(fn -> execute(conn, "slow_tool", %{seconds: 20}, timeout: 300) end)
    assert {:error, %Error{status: 4}} = result
    assert time < 15_000_000
    # The connection is unharmed.
    assert {:ok, _} = execute(conn, "echo", %{value: 1})
  end

  test "a streaming deadline ends the stream with DEADLINE_EXCEEDED", %{conn: conn} do
    {:ok, ref} = stream_tool(conn, "endless_stream", %{interval_ms: 10}, timeout: 1_000)
    {messages, result} = collect(conn, ref)
    assert {:error, %Error{status: 4}} = result
    assert messages != []
  end

  test "cancel resets the stream and the tool sees it", %{conn: conn} do
    tag = "cancel-#{System.unique_integer([:positive])}"
    {:ok, ref} = stream_tool(conn, "endless_stream", %{interval_ms: 10, tag: tag})
    assert_receive {:krait_stream, ^ref, {:messages, _, _}}, 5000
    assert :ok = Connection.cancel(conn, ref)
    # Flushing what was already delivered is the owner's business.
    flush_stream(ref)
    refute_receive {:krait_stream, ^ref, _}, 200
    assert eventually(fn -> Map.has_key?(events(conn, tag), "cancel_seen") end)
    assert elem(:sys.get_state(conn), 1).streams == %{}
  end

  defp flush_stream(ref) do
    receive do
      {:krait_stream, ^ref, _} -> flush_stream(ref)
    after
      0 -> :ok
    end
  end

  test "a slow owner bounds memory to about one stream window", %{conn: conn} do
    # 64 messages of 256 KiB: 16 MiB in all, four times the 4 MiB stream window.
    {:ok, ref} = stream_tool(conn, "stream_arrays", %{batches: 64, batch_rows: 64, cols: 1024})
    # everything the server may send without an acknowledgement, until it stops (quiet for 300 ms)
    assert_receive {:krait_stream, ^ref, {:messages, _, first}}, 5_000
    held = drain(ref, first)
    assert held > 0
    assert held <= 4 * 1024 * 1024 + 300_000, "received #{held} bytes without acknowledging any"

    # The server is blocked, not finished: acknowledging lets the rest through.
    Connection.ack(conn, ref, held)
    {messages, :ok} = collect(conn, ref)
    total = held + Enum.reduce(messages, 0, &(&2 + byte_size(&1) + 5))
    assert total > 16 * 1024 * 1024
  end

  defp drain(ref, bytes) do
    receive do
      {:krait_stream, ^ref, {:messages, _messages, n}} -> drain(ref, bytes + n)
    after
      300 -> bytes
    end
  end

  test "the owner's death cancels its stream", %{conn: conn} do
    tag = "owner-#{System.unique_integer([:positive])}"
    test = self()

    owner =
      spawn(fn ->
        {:ok, ref} = stream_tool(conn, "endless_stream", %{interval_ms: 10, tag: tag})
        send(test, {:started, ref})
        Process.sleep(:infinity)
      end)

    assert_receive {:started, _ref}, 5000
    assert eventually(fn -> Map.has_key?(events(conn, tag), "ticks") end)
    Process.exit(owner, :kill)
    assert eventually(fn -> Map.has_key?(events(conn, tag), "cancel_seen") end)
    assert elem(:sys.get_state(conn), 1).streams == %{}
  end

  test "a stream can be delivered to another owner process", %{conn: conn} do
    test = self()

    owner =
      spawn(fn ->
        receive do
          {:go, ref} -> send(test, {:collected, collect(conn, ref)})
        end
      end)

    {:ok, ref} = stream_tool(conn, "stream_numbers", %{count: 5}, owner: owner)
    send(owner, {:go, ref})
    assert_receive {:collected, {messages, :ok}}, 5000
    assert length(messages) == 6
  end

  test "metadata and the HPACK dynamic table hold up over many calls", %{conn: conn} do
    for i <- 1..200 do
      metadata = %{
        "x-request-id" => "req-#{i}",
        "x-trace-bin" => <<i, 0, 255>>,
        "x-static" => "same"
      }

      assert {:ok, _} = execute(conn, "echo", %{value: i}, timeout: 5000, metadata: metadata)
    end

    assert_raise ArgumentError, fn ->
      execute(conn, "echo", %{}, metadata: %{"Bad Key" => "v"})
    end
  end

  test "a refused connection returns an error and leaves the caller alive" do
    {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(listener)
    :gen_tcp.close(listener)
    assert {:error, :econnrefused} = Connection.start_link(port: port)
  end

  test "when the worker goes away, open calls fail UNAVAILABLE and the connection stops" do
    worker = PythonWorker.start()
    on_exit(fn -> PythonWorker.stop(worker) end)
    conn = connect(worker)
    monitor = Process.monitor(conn)
    {:ok, ref} = stream_tool(conn, "endless_stream", %{interval_ms: 10})
    assert_receive {:krait_stream, ^ref, {:messages, _, _}}, 5000
    PythonWorker.stop(worker)
    assert {_, {:error, %Error{status: status}}} = collect(conn, ref, 10_000)
    assert status in [1, 14]
    assert_receive {:DOWN, ^monitor, :process, ^conn, {:shutdown, _}}, 10_000
    assert {:error, %Error{status: 14}} = execute(conn, "echo", %{value: 1})
  end
end
