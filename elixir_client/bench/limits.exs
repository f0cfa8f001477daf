defmodule KraitBench.Limits do
  @moduledoc """
  The machine's limits for the local link, measured in the same run as Krait: minimal Python loops over
  an Erlang Port with `{packet, 4}` (`scripts/benchmarks/port_limits.py`), nothing of Krait on either
  side but the JSON library.
  """

  alias KraitBench.Stats

  @script "scripts/benchmarks/port_limits.py"

  defp open(python, root, args) do
    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        {:packet, 4},
        {:args, [@script | args]},
        {:cd, root}
      ])

    Port.command(port, "go")
    port
  end

  @doc "Closes a Port opened here."
  def close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  @doc """
  A Python echo loop over a Port, kept open so that it can be measured many times, warm and interleaved with
  Krait's rows (`ping_samples/2`); `close/1` when done.
  """
  def ping_open(python, root), do: open(python, root, ["echo"])

  @doc "µs of each of `calls` round trips of `{\"a\":1,\"b\":2}` through an open echo loop."
  def ping_samples(port, calls) do
    message = Krait.JSON.encode!(%{a: 1, b: 2}) |> IO.iodata_to_binary()

    round_trip = fn ->
      Port.command(port, message)

      receive do
        {^port, {:data, data}} -> %{"a" => 1} = Krait.JSON.decode!(data)
      end
    end

    for _ <- 1..calls, do: elem(Stats.timed(round_trip), 0)
  end

  @doc """
  Round trips through a fresh echo loop after only 200 unmeasured ones: `%{p50: µs, p99: µs}`. This is how
  the limit was measured before it was measured warm: the vCPUs may still be asleep between messages.
  """
  def ping_pong_cold(python, root, calls) do
    port = ping_open(python, root)
    ping_samples(port, 200)
    us = ping_samples(port, calls)
    close(port)
    %{p50: Stats.percentile(us, 50), p99: Stats.percentile(us, 99)}
  end

  @doc """
  A Krait worker driven over the local link straight from this process (no pool, no `Krait.Worker`
  between), kept open for `link_direct_samples/2`. Against the pool's figure it shows what the BEAM side
  costs; against the ping-pong, what the worker costs.
  """
  def link_direct_open(python, root) do
    args = [
      "-m",
      "python_worker",
      "serve",
      "--adapter",
      "adapters.showcase:ShowcaseAdapter",
      "--link"
    ]

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        {:packet, 4},
        {:args, args},
        {:cd, root}
      ])

    await_ready(port)
    port
  end

  @doc "µs of each of `calls` round trips of the `add` tool over an open link worker."
  def link_direct_samples(port, calls) do
    request =
      Krait.Proto.ExecuteToolRequest.encode(%Krait.Proto.ExecuteToolRequest{
        tool_name: "add",
        args_json: ~s({"a": 1, "b": 2})
      })

    call = fn ->
      id = System.unique_integer([:positive])

      Port.command(
        port,
        Krait.Link.Frame.open(id, "ExecuteTool", request, 10_000, 4_194_304, %{})
      )

      await_end(port, id)
    end

    for _ <- 1..calls, do: elem(Stats.timed(call), 0)
  end

  defp await_ready(port) do
    receive do
      {^port, {:data, frame}} ->
        case Krait.Link.Frame.decode(frame) do
          {:ready, 0, _} -> :ok
          _ -> await_ready(port)
        end
    after
      30_000 -> raise "the link worker did not start"
    end
  end

  defp await_end(port, id) do
    receive do
      {^port, {:data, frame}} ->
        case Krait.Link.Frame.decode(frame) do
          {:end, ^id, _} -> :ok
          _ -> await_end(port, id)
        end
    end
  end

  @doc "The naive JSON-lines stream's Python side, kept open so that it can be measured many times."
  def json_lines_open(python, root), do: open(python, root, ["jsonl"])

  @doc "`{\"i\": n}` items per second: JSON lines, 1,024 a frame, each line decoded and handed to a callback."
  def json_lines(port, items) do
    callback = fn %{"i" => _} -> :ok end

    {us, count} =
      Stats.timed(fn ->
        Port.command(port, Integer.to_string(items))
        lines_loop(port, callback, 0)
      end)

    if count != items, do: raise("the JSON-lines stream delivered #{count} of #{items} items")
    items / (us / 1.0e6)
  end

  defp lines_loop(port, callback, count) do
    receive do
      {^port, {:data, ""}} ->
        count

      {^port, {:data, frame}} ->
        lines = :binary.split(frame, "\n", [:global])
        Enum.each(lines, fn line -> callback.(Krait.JSON.decode!(line)) end)
        lines_loop(port, callback, count + length(lines))
    end
  end

  @doc "Bytes per second of `count` raw frames of `mib` MiB through the Port."
  def raw_bytes(python, root, count, mib) do
    port = open(python, root, ["bytes", Integer.to_string(count), Integer.to_string(mib)])
    {us, bytes} = Stats.timed(fn -> bytes_loop(port, 0) end)
    close(port)
    if bytes != count * mib * 1_048_576, do: raise("raw bytes: got #{bytes}")
    bytes / (us / 1.0e6)
  end

  defp bytes_loop(port, total) do
    receive do
      {^port, {:data, ""}} -> total
      {^port, {:data, block}} -> bytes_loop(port, total + byte_size(block))
    end
  end

  @doc "The naive input stream's Python side (JSON lines in, summed), kept open for `json_lines_in/2`."
  def json_lines_in_open(python, root), do: open(python, root, ["jsonl_in"])

  @doc """
  `{\"i\": n}` items per second into Python: each item encoded here, 1,024 lines a frame, each line decoded and
  summed there; the sum comes back at the end.
  """
  def json_lines_in(port, items) do
    {us, sum} =
      Stats.timed(fn ->
        0..(items - 1)
        |> Stream.map(&(Krait.JSON.encode!(%{i: &1}) |> IO.iodata_to_binary()))
        |> Stream.chunk_every(1024)
        |> Enum.each(&Port.command(port, Enum.intersperse(&1, "\n")))

        Port.command(port, "")

        receive do
          {^port, {:data, sum}} -> String.to_integer(sum)
        end
      end)

    if sum != div(items * (items - 1), 2), do: raise("the JSON-lines input summed to #{sum}")
    items / (us / 1.0e6)
  end

  @doc "The raw-bytes input's Python side, kept open for `bytes_in/3`."
  def bytes_in_open(python, root), do: open(python, root, ["bytes_in"])

  @doc "Bytes per second of `count` frames of `block` into Python (counted there)."
  def bytes_in(port, count, block) do
    {us, total} =
      Stats.timed(fn ->
        for _ <- 1..count, do: Port.command(port, block)
        Port.command(port, "")

        receive do
          {^port, {:data, total}} -> String.to_integer(total)
        end
      end)

    if total != count * byte_size(block), do: raise("raw bytes in: got #{total}")
    total / (us / 1.0e6)
  end
end
