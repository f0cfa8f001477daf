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

  defp close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  @doc "Round trips of `{\"a\":1,\"b\":2}` through a Python echo loop: `%{p50: µs, p99: µs}`."
  def ping_pong(python, root, calls) do
    port = open(python, root, ["echo"])
    message = Krait.JSON.encode!(%{a: 1, b: 2}) |> IO.iodata_to_binary()

    round_trip = fn ->
      Port.command(port, message)

      receive do
        {^port, {:data, data}} -> %{"a" => 1} = Krait.JSON.decode!(data)
      end
    end

    for _ <- 1..200, do: round_trip.()
    us = for _ <- 1..calls, do: elem(Stats.timed(round_trip), 0)
    close(port)
    %{p50: Stats.percentile(us, 50), p99: Stats.percentile(us, 99)}
  end

  @doc """
  A Krait worker driven over the local link straight from this process (no pool, no `Krait.Worker`
  between): round trips of the `add` tool, `%{p50: µs, p99: µs}`. Against the pool's figure it shows
  what the BEAM side costs; against the ping-pong, what the worker costs.
  """
  def link_direct(python, root, calls) do
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

    for _ <- 1..200, do: call.()
    us = for _ <- 1..calls, do: elem(Stats.timed(call), 0)
    close(port)
    %{p50: Stats.percentile(us, 50), p99: Stats.percentile(us, 99)}
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

  @doc "`{\"i\": n}` items per second: JSON lines, 1,024 a frame, each line decoded and handed to a callback."
  def json_lines(python, root, items) do
    port = open(python, root, ["jsonl", Integer.to_string(items)])
    callback = fn %{"i" => _} -> :ok end
    {us, count} = Stats.timed(fn -> lines_loop(port, callback, 0) end)
    close(port)
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
end
