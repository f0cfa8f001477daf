defmodule Krait.TransportTest do
  # The local link and gRPC are two transports of one contract: every showcase stream gives the same
  # chunks over both (seq, data, content type, is_final, metadata apart from timings), errors included,
  # and a pool's workers listen on no TCP port unless asked to.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag timeout: 120_000

  setup_all do
    %{
      link: start_module_pool!(size: 1, transport: :link),
      grpc: start_module_pool!(size: 1, transport: :grpc)
    }
  end

  # Ends by themselves: every streaming tool of the showcase but the endless and blocking ones.
  @streams [
    {"stream_progress", %{steps: 5}},
    {"stream_numbers", %{count: 50}},
    {"stream_items", %{count: 4}},
    {"stream_small", %{count: 5_000}},
    {"stream_arrays", %{batches: 3, batch_rows: 8, cols: 4}},
    {"stream_arrays", %{batches: 2, batch_rows: 300, cols: 1024}},
    {"stream_arrays", %{batches: 2, batch_rows: 2, cols: 3, as_json: true}},
    {"stream_text", %{lines: 3}},
    {"failing_stream", %{fail_at: 3}},
    {"progress_demo", %{steps: 3}},
    {"yield_after_final", %{}},
    {"returns_dict", %{}},
    {"stream_numbers", %{count: "three"}},
    {"no_such_tool", %{}}
  ]

  defp run(pool, tool, args) do
    test = self()
    result = Krait.execute_stream(tool, args, &send(test, {:chunk, &1}), pool: pool)

    chunks =
      for c <- received_chunks(),
          do: %{c | metadata: Map.drop(c.metadata, ["execution_time_ms", "worker_id"])}

    {comparable(result), chunks}
  end

  defp comparable(:ok), do: :ok

  defp comparable({:error, e}),
    do: {e.category, e.message, Map.take(e.details, [:type, :status, :tool_name])}

  for {tool, args} <- @streams do
    test "#{tool} #{inspect(args)}: the same chunks over the link and gRPC", pools do
      {link_result, link_chunks} = run(pools.link, unquote(tool), unquote(Macro.escape(args)))
      {grpc_result, grpc_chunks} = run(pools.grpc, unquote(tool), unquote(Macro.escape(args)))
      assert link_result == grpc_result
      assert length(link_chunks) == length(grpc_chunks)
      assert link_chunks == grpc_chunks
    end
  end

  test "unary results and errors are the same over both", pools do
    for {tool, args} <- [
          {"add", %{a: 1, b: 2}},
          {"big_int", %{exponent: 80}},
          {"echo", %{value: %{"nested" => [1, "two", nil]}}},
          {"fail", %{message: "boom"}},
          {"add", %{a: 1}},
          {"stream_numbers", %{}},
          {"reverse_bytes", %{blob: {:binary, "abc"}}}
        ] do
      link = Krait.execute(tool, args, pool: pools.link)
      grpc = Krait.execute(tool, args, pool: pools.grpc)

      case {link, grpc} do
        {{:ok, a}, {:ok, b}} -> assert a == b
        {{:error, a}, {:error, b}} -> assert comparable({:error, a}) == comparable({:error, b})
        other -> flunk("different outcomes for #{tool}: #{inspect(other)}")
      end
    end
  end

  test "a link worker listens on no TCP port; exposing gRPC opens one on loopback", pools do
    [worker] = worker_os_pids(pools.link)
    assert listening_ports(worker) == []

    exposed = start_pool!(size: 1, transport: :link, expose_grpc: true)
    [%{os_pid: os_pid, grpc_port: port}] = Krait.Pool.stats(exposed).workers
    assert [{{127, 0, 0, 1}, ^port}] = listening_ports(os_pid)
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: exposed)
  end

  test "a slow unary call on the link leaves the link read: its cancel and other calls get through" do
    # The worker serves a lone unary call on the thread that reads the link, and hands the reading over
    # once the call turns out slow: a second call on the same worker is answered while the first runs,
    # and the first one's caller going away reaches the tool.
    pool = start_pool!(size: 1, transport: :link, calls_per_worker: 2)
    [%{id: wid}] = Krait.Pool.stats(pool).workers

    # twice: the second time, the tool is known to be slow and handed over at once
    for _ <- 1..2 do
      tag = tag()

      slow =
        Task.async(fn ->
          Krait.execute("slow_tool", %{seconds: 10, tag: tag}, pool: pool, timeout: 30_000)
        end)

      assert eventually(fn -> worker_events(pool, wid, tag)["started"] end)
      started = System.monotonic_time(:millisecond)
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 30_000)
      # well before the slow call could end
      assert System.monotonic_time(:millisecond) - started < 5_000

      Task.shutdown(slow, :brutal_kill)
      assert eventually(fn -> worker_events(pool, wid, tag)["cancel_seen"] end, 5_000)
      assert eventually(fn -> Krait.Pool.stats(pool).busy == 0 end)
    end
  end

  # {address, port} of the TCP sockets an OS process listens on (/proc: its socket inodes in LISTEN).
  defp listening_ports(os_pid) do
    inodes =
      for fd <- File.ls!("/proc/#{os_pid}/fd"),
          {:ok, target} <- [File.read_link("/proc/#{os_pid}/fd/#{fd}")],
          [_, inode] <- [Regex.run(~r/^socket:\[(\d+)\]$/, target)],
          into: MapSet.new(),
          do: inode

    for file <- ["/proc/net/tcp", "/proc/net/tcp6"],
        line <- file |> File.read!() |> String.split("\n") |> Enum.drop(1),
        [_, local, _remote, "0A" | rest] <- [String.split(line)],
        MapSet.member?(inodes, Enum.at(rest, 5)),
        do: parse_address(local)
  end

  defp ipv4(hex) do
    <<a, b, c, d>> = <<String.to_integer(hex, 16)::little-32>>
    {a, b, c, d}
  end

  defp parse_address(local) do
    [hex_ip, hex_port] = String.split(local, ":")
    port = String.to_integer(hex_port, 16)

    # IPv4 as a little-endian word; IPv6 as four of them (an IPv4-mapped address ends in the IPv4 one)
    ip =
      case String.length(hex_ip) do
        8 ->
          ipv4(hex_ip)

        32 ->
          if String.starts_with?(hex_ip, "0000000000000000FFFF0000"),
            do: ipv4(String.slice(hex_ip, 24, 8)),
            else: hex_ip
      end

    {ip, port}
  end
end
