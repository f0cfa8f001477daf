defmodule Krait.Link.DirectTest do
  # A local caller writes its call's frames to the worker's Port itself (Krait.Link.Handle): the
  # worker process only routes what comes back. These tests hold the guarantees of the hop it no
  # longer makes: a dead caller's call is cancelled, a dead worker fails every registered call
  # (unprocessed when it never started), a stopping worker refuses calls not yet written.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  alias Krait.GRPC.Error, as: GrpcError
  alias Krait.Link.{Handle, Registry}

  @moduletag timeout: 120_000

  @unary "/krait.v1.ToolWorker/ExecuteTool"
  @stream "/krait.v1.ToolWorker/ExecuteStreamingToolBatched"

  defp worker(pool) do
    [%{pid: pid, id: id, os_pid: os_pid}] = Krait.Pool.stats(pool).workers
    {pid, id, os_pid}
  end

  defp request(tool, args) do
    Krait.Proto.ExecuteToolRequest.encode(%Krait.Proto.ExecuteToolRequest{
      tool_name: tool,
      args_json: IO.iodata_to_binary(Krait.JSON.encode!(args))
    })
  end

  defp result(sref) do
    receive do
      {:krait_stream, ^sref, {:messages, [payload], _}} ->
        Krait.JSON.decode!(Krait.Proto.ExecuteToolResponse.decode(payload).data)
    after
      10_000 -> flunk("no response")
    end
  end

  defp events(pool, tag) do
    {_, id, _} = worker(pool)
    worker_events(pool, id, tag)
  end

  test "a ready worker's handle is registered; its calls bypass the worker process" do
    pool = start_pool!(size: 1)
    {pid, _, _} = worker(pool)
    assert %Handle{} = Registry.lookup(pid)

    # With the worker process suspended, the call still reaches Python: its frames wait in the
    # worker's mailbox (through the worker, the open request itself would be all that waits).
    :ok = :sys.suspend(pid)

    assert {:ok, {id, ref} = sref} =
             Krait.Link.start_stream(pid, @unary, request("add", %{a: 1, b: 2}), [])

    assert is_integer(id) and is_reference(ref)

    assert eventually(fn ->
             match?({:message_queue_len, n} when n >= 2, Process.info(pid, :message_queue_len))
           end)

    :ok = :sys.resume(pid)
    assert result(sref) == 3.0
    assert_receive {:krait_stream, ^sref, {:done, :ok}}, 10_000
    Krait.Link.ack(pid, sref, 10)
    assert eventually(fn -> :ets.info(Registry.lookup(pid).tab, :size) == 0 end)
  end

  test "a worker without a registered handle is reached through its process" do
    pool = start_pool!(size: 1)
    {pid, _, _} = worker(pool)
    handle = Registry.lookup(pid)
    :ets.delete(Registry, pid)

    try do
      assert {:ok, ref} = Krait.Link.start_stream(pid, @unary, request("add", %{a: 2, b: 2}), [])
      assert is_reference(ref)
      assert result(ref) == 4.0
      assert_receive {:krait_stream, ^ref, {:done, :ok}}, 10_000
      assert {:ok, 5.0} = Krait.execute("add", %{a: 2, b: 3}, pool: pool)
    after
      :ets.insert(Registry, {pid, handle})
    end
  end

  test "a caller killed right after writing OPEN has its call cancelled" do
    pool = start_pool!(size: 1)
    {pid, _, _} = worker(pool)
    tag = tag()
    test = self()

    caller =
      spawn(fn ->
        {:ok, _} =
          Krait.Link.start_stream(
            pid,
            @stream,
            request("endless_stream", %{interval_ms: 20, tag: tag}),
            []
          )

        send(test, :opened)
        Process.sleep(:infinity)
      end)

    assert_receive :opened, 10_000
    Process.exit(caller, :kill)
    assert eventually(fn -> Map.has_key?(events(pool, tag), "finally") end, 10_000)
    assert eventually(fn -> :ets.info(Registry.lookup(pid).tab, :size) == 0 end)
  end

  test "a caller killed between registering its call and writing OPEN: the worker reaps the call" do
    pool = start_pool!(size: 1)
    {pid, _, _} = worker(pool)
    handle = Registry.lookup(pid)
    dead = spawn(fn -> :ok end)
    ref = Process.monitor(dead)
    assert_receive {:DOWN, ^ref, :process, ^dead, _}

    # what Handle.open/7 leaves when its caller dies between the insert and the Port write
    dead_id = Handle.next_id(handle)
    :ets.insert(handle.tab, {dead_id, {dead_id, make_ref()}, dead, dead, 0})
    # a live caller about to write its OPEN is left alone
    live_id = Handle.next_id(handle)
    :ets.insert(handle.tab, {live_id, {live_id, make_ref()}, self(), self(), 0})

    send(pid, :reap_link_calls)
    :sys.get_state(pid)
    refute :ets.member(handle.tab, dead_id)
    assert :ets.member(handle.tab, live_id)
    :ets.delete(handle.tab, live_id)
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
  end

  test "the port dies: a started call is UNAVAILABLE, one registered but not started is unprocessed" do
    capture_log_quietly(fn ->
      pool = start_pool!(size: 1)
      {pid, _, os_pid} = worker(pool)
      handle = Registry.lookup(pid)

      {:ok, started} =
        Krait.Link.start_stream(pid, @stream, request("endless_stream", %{interval_ms: 10}), [])

      assert_receive {:krait_stream, ^started, {:messages, _, _}}, 10_000
      # a call whose caller has registered it and not written its OPEN yet
      id = Handle.next_id(handle)
      pending = {id, make_ref()}
      :ets.insert(handle.tab, {id, pending, self(), self(), 0})

      os_kill(os_pid, "KILL")

      assert_receive {:krait_stream, ^started,
                      {:done, {:error, %GrpcError{status: 14, unprocessed: false}}}},
                     10_000

      assert_receive {:krait_stream, ^pending,
                      {:done, {:error, %GrpcError{status: 14, unprocessed: true}}}},
                     10_000

      # the gate is closed and the table empty: a caller still holding the handle is refused
      assert {:error, :noproc} =
               Handle.open(handle, self(), self(), "ExecuteTool", request("add", %{}), 0, %{})

      assert :ets.info(handle.tab, :size) in [0, :undefined]
    end)
  end

  test "a worker stopped with a call's frames unread: its caller gets them, not a second run" do
    capture_log_quietly(fn ->
      pool = start_pool!(size: 1)
      {pid, id, _} = worker(pool)
      test = self()
      :ok = :sys.suspend(pid)

      call =
        Task.async(fn ->
          Krait.execute_stream("stream_numbers", %{count: 3}, &send(test, {:chunk, &1}),
            pool: pool,
            timeout: 30_000
          )
        end)

      # the whole call (STARTED, its messages, END) waits in the suspended worker's mailbox
      assert eventually(fn ->
               match?({:message_queue_len, n} when n >= 3, Process.info(pid, :message_queue_len))
             end)

      Process.sleep(200)
      :ok = :sys.terminate(pid, {:shutdown, :test})
      assert :ok = Task.await(call, 30_000)
      chunks = received_chunks()
      assert [%{is_final: true, metadata: %{"worker_id" => ^id}} | _] = Enum.reverse(chunks)
    end)
  end

  test "a handle whose worker is gone refuses calls as never sent" do
    capture_log_quietly(fn ->
      pool = start_pool!(size: 1)
      {pid, _, _} = worker(pool)
      handle = Registry.lookup(pid)
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, :process, ^pid, _}

      assert {:error, :noproc} =
               Handle.open(handle, self(), self(), "ExecuteTool", request("add", %{}), 0, %{})

      assert eventually(fn -> Registry.lookup(pid) == nil end)
    end)
  end

  test "a stopping worker closes its gate first: a call not yet written is refused, never lost" do
    pool = start_pool!(size: 1)
    {pid, _, _} = worker(pool)
    handle = Registry.lookup(pid)
    Handle.close(handle)

    assert {:error, :noproc} =
             Handle.open(handle, self(), self(), "ExecuteTool", request("add", %{}), 0, %{})

    assert :ets.info(handle.tab, :size) == 0
  end

  test "a direct stream larger than the window: acknowledgements return credit to the worker" do
    pool = start_pool!(size: 1)
    test = self()
    # 12 batches of 300 x 1024 float32: ~14 MiB, over three times the 4 MiB window
    args = %{batches: 12, batch_rows: 300, cols: 1024}

    assert :ok =
             Krait.execute_stream("stream_arrays", args, &send(test, {:chunk, &1}),
               pool: pool,
               timeout: 30_000
             )

    assert length(received_chunks()) >= 12
    assert Handle.credit_step() * 4 == Handle.window()
  end

  defp capture_log_quietly(fun), do: ExUnit.CaptureLog.capture_log(fun)
end
