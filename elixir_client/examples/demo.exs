# Krait demo: Elixir calling Python tools in supervised worker processes, streaming live.
#
#   cd elixir_client && mix run examples/demo.exs
#
# KRAIT_PYTHON overrides the Python executable (default: the repository's .venv/bin/python).
require Logger

# Worker logs (Python's own lines too) go through Logger with the worker id; keep the demo's output clean.
Logger.configure(level: :critical)

root = Path.expand("../..", __DIR__)
python = System.get_env("KRAIT_PYTHON") || Path.join(root, ".venv/bin/python")

defmodule Demo do
  def section(title), do: IO.puts(["\n", IO.ANSI.format([:bright, "== #{title}"])])

  # On a terminal, progress redraws one line; piped, it prints a line per update.
  def live(text) do
    if IO.ANSI.enabled?(), do: IO.write("\r\e[K" <> text), else: IO.puts(text)
  end

  def line_start, do: if(IO.ANSI.enabled?(), do: "\r\e[K", else: "")

  def bar(percent) do
    filled = round(percent / 5)
    "[" <> String.duplicate("#", filled) <> String.duplicate(".", 20 - filled) <> "]"
  end

  def ms(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - started}
  end
end

# KRAIT_METRICS_PORT=N: the pool serves its metrics and its workers' at http://127.0.0.1:N/metrics
# (docs/observability.md), and the demo keeps calling its tools at the end until Ctrl-C.
metrics_port =
  case System.get_env("KRAIT_METRICS_PORT") do
    nil -> nil
    port -> String.to_integer(port)
  end

pool_opts = [
  adapter: "adapters.showcase:ShowcaseAdapter",
  size: 2,
  python: python,
  cwd: root,
  metrics_port: metrics_port
]

{:ok, _} = Supervisor.start_link([{Krait.Pool, pool_opts}], strategy: :one_for_one)

{:ok, ready_ms} = Demo.ms(fn -> Krait.Pool.await_ready(Krait.Pool, 30_000) end)

Demo.section(
  "A pool of 2 Python workers (adapters.showcase:ShowcaseAdapter), ready in #{ready_ms} ms"
)

for w <- Krait.Pool.stats().workers, do: IO.puts("  worker #{w.id}  os pid #{w.os_pid}")

Demo.section("Krait.execute_stream: live progress, one callback per chunk, in order")

:ok =
  Krait.execute_stream("stream_progress", %{steps: 10, delay_ms: 150}, fn chunk ->
    if chunk.is_final do
      meta = chunk.metadata

      IO.puts(
        "#{Demo.line_start()}  done in #{meta["execution_time_ms"]} ms on #{meta["worker_id"]}"
      )
    else
      progress = "step #{chunk["step"]}/#{chunk["total"]} #{Demo.bar(chunk["progress"])}"
      Demo.live("  #{progress} #{round(chunk["progress"])}%")
    end
  end)

Demo.section("The shortest stream: a callback per chunk")

:ok =
  Krait.execute_stream("stream_progress", %{steps: 5}, fn chunk ->
    IO.inspect(chunk["progress"])
  end)

IO.puts("  (the last value is the stream's final chunk, which carries metadata but no payload)")

Demo.section("Krait.stream: a lazy Enumerable; Enum.take/2 cancels the endless tool")

Krait.stream("endless_stream", %{interval_ms: 100})
|> Stream.map(& &1["tick"])
|> Enum.take(5)
|> IO.inspect(label: "  ticks")

Demo.section("NumPy chunks arrive as tensors (dtype, shape, raw binary)")

:ok =
  Krait.execute_stream("stream_arrays", %{batches: 3, batch_rows: 256, cols: 256}, fn
    %{data: %Krait.Tensor{} = t} ->
      IO.puts("  tensor #{t.dtype} #{inspect(t.shape)} (#{byte_size(t.data)} bytes)")

    _final ->
      :ok
  end)

Demo.section("Unary calls, arrays as arguments, Python errors")
IO.inspect(Krait.execute("add", %{a: 2, b: 3}), label: "  add(2, 3)")
values = Krait.Tensor.from_list([1.0, 2.0, 3.5], :float32)
IO.inspect(Krait.execute("array_stats", %{values: values}), label: "  array_stats")
{:error, error} = Krait.execute("fail", %{message: "epochs must be > 0"})
IO.puts("  fail -> #{Exception.message(error)}")

Demo.section("Sessions keep state on their worker")

for _ <- 1..3 do
  {:ok, r} = Krait.execute("session_counter", %{}, session_id: "demo-session")
  IO.puts("  session demo-session: call #{r["count"]} on #{r["worker_id"]}")
end

Demo.section("Timeouts reach Python too")
{{:error, e}, t} = Demo.ms(fn -> Krait.execute("slow_tool", %{seconds: 30}, timeout: 500) end)
IO.puts("  slow_tool(30 s) with timeout 500 ms -> #{e.category} after #{t} ms")

Demo.section("Throughput: small JSON chunks into an Elixir callback")
n = 200_000
{:ok, t} = Demo.ms(fn -> Krait.execute_stream("stream_small", %{count: n}, fn _ -> :ok end) end)
IO.puts("  #{n} chunks in #{t} ms: #{round(n * 1000 / max(t, 1))} chunks/s")

Demo.section("Streams both ways: an Elixir stream into a running tool, chunk by chunk")

# echo_input yields each item back as it reads it: the input is pulled lazily, only as the tool reads
Stream.iterate(1, &(&1 * 2))
|> Stream.map(&%{"n" => &1})
|> then(&Krait.stream("echo_input", %{}, input: &1))
|> Stream.map(& &1["n"])
|> Enum.take(8)
|> then(&IO.puts("  8 items of an endless Elixir stream, echoed by Python: #{inspect(&1)}"))

{{:ok, sum}, t} =
  Demo.ms(fn -> Krait.execute("sum_input", %{}, input: Stream.map(1..200_000, &%{"i" => &1})) end)

IO.puts("  200,000 items summed by a Python tool as they arrive: #{sum} in #{t} ms")

Demo.section("A pipeline: each stage a tool on its own worker, backpressure end to end")

Krait.stream("stream_numbers", %{count: 5})
|> then(&Krait.stream("echo_input", %{}, input: &1))
|> Stream.reject(& &1.is_final)
|> Enum.map(& &1["number"])
|> then(&IO.puts("  stream_numbers |> echo_input: #{inspect(&1)}"))

Demo.section(
  "A Python tool calls back into Elixir: ctx.call(\"price\", ...) runs an Elixir function"
)

prices = %{"A-1" => 12.5, "B-2" => 3.25}

handlers = %{
  "price" => fn %{"sku" => sku} ->
    case Map.fetch(prices, sku) do
      {:ok, price} -> {:ok, %{"sku" => sku, "price" => price}}
      :error -> {:error, "no price for #{sku}"}
    end
  end
}

for sku <- ["A-1", "Z-9"] do
  {:ok, answer} =
    Krait.execute("ask", %{name: "price", args: %{"sku" => sku}}, handlers: handlers)

  IO.puts("  ask(price, #{sku}) -> #{inspect(answer)}")
end

Demo.section("A worker killed with SIGKILL mid-stream is replaced")
test = self()

task =
  Task.async(fn ->
    Krait.execute_stream("endless_stream", %{interval_ms: 20}, fn _ -> send(test, :tick) end)
  end)

receive do: (:tick -> :ok)
%{os_pid: victim} = Enum.find(Krait.Pool.stats().workers, &(&1.status == :busy))
System.cmd("kill", ["-KILL", Integer.to_string(victim)])
{:error, e} = Task.await(task)
IO.puts("  killed os pid #{victim}: the caller got #{inspect(e.category)} (#{e.message})")
Krait.Pool.await_ready(Krait.Pool, 30_000)

for w <- Krait.Pool.stats().workers,
    do: IO.puts("  worker #{w.id}  os pid #{w.os_pid}  restarts #{w.restarts}")

# The ML adapter, if this checkout has it: its training tool streams epochs.
if File.exists?(Path.join(root, "adapters/ml")) do
  Demo.section("adapters.ml:MLAdapter: training with live epochs")
  ml_opts = [name: Demo.ML, adapter: "adapters.ml:MLAdapter", size: 1, python: python, cwd: root]
  {:ok, _} = Supervisor.start_link([{Krait.Pool, ml_opts}], strategy: :one_for_one)
  :ok = Krait.Pool.await_ready(Demo.ML, 60_000)
  {:ok, tools} = Krait.list_tools(pool: Demo.ML)

  names = Enum.map(tools, & &1.name)
  IO.puts("  tools: #{Enum.join(names, ", ")}")

  if "train_model" in names do
    # A session keeps the trained model on its worker for the calls that follow.
    opts = [pool: Demo.ML, session_id: "demo-ml"]

    result =
      Krait.execute_stream(
        "train_model",
        %{epochs: 10},
        fn chunk ->
          case chunk["type"] do
            "progress" ->
              IO.puts(
                "  Epoch #{chunk["epoch"]}/#{chunk["epochs"]}: loss=#{Float.round(chunk["loss"], 4)} " <>
                  "acc=#{Float.round(chunk["accuracy"], 4)} val_acc=#{Float.round(chunk["val_accuracy"], 4)}"
              )

            "complete" ->
              IO.puts(
                "  Training complete! model #{chunk["model_id"]}, #{chunk["parameters"]} parameters"
              )

              send(self(), {:model, chunk["model_id"]})

            _ ->
              :ok
          end
        end,
        opts
      )

    IO.puts("  -> #{inspect(result)}")

    receive do
      {:model, model_id} when is_binary(model_id) ->
        case Krait.execute("evaluate", %{model_id: model_id}, opts) do
          {:ok, %{"accuracy" => acc}} ->
            IO.puts("  evaluate(#{model_id}): held-out accuracy #{Float.round(acc, 4)}")

          other ->
            IO.puts("  evaluate: #{inspect(other, limit: 5)}")
        end
    after
      0 -> :ok
    end
  end
end

# Live audio analysis: a real input device when there is one, else a generated test signal, paced in real time.
if File.exists?(Path.join(root, "adapters/audio")) do
  Demo.section("adapters.audio:AudioAdapter: live audio levels and pitch")

  audio_opts = [
    name: Demo.Audio,
    adapter: "adapters.audio:AudioAdapter",
    size: 1,
    python: python,
    cwd: root
  ]

  {:ok, _} = Supervisor.start_link([{Krait.Pool, audio_opts}], strategy: :one_for_one)
  :ok = Krait.Pool.await_ready(Demo.Audio, 60_000)

  meter = fn db ->
    # -60..0 dBFS as 30 columns
    filled = db |> max(-60.0) |> min(0.0) |> Kernel.+(60.0) |> Kernel./(2) |> round()
    "|" <> String.duplicate("=", filled) <> String.duplicate(" ", 30 - filled) <> "|"
  end

  sweep = %{kind: "sweep", frequency_hz: 110, end_frequency_hz: 880, level_dbfs: -12, sweep_s: 3}

  source =
    case Krait.execute_stream(
           "stream_levels",
           %{source: "device", max_chunks: 1},
           fn _ -> :ok end,
           pool: Demo.Audio,
           timeout: 5_000
         ) do
      :ok ->
        IO.puts("  source: the default input device")
        %{source: "device"}

      {:error, e} ->
        IO.puts("  no input device here (#{String.slice(e.message, 0, 60)}...)")
        IO.puts("  source: a test signal, a 110 -> 880 Hz sweep at -12 dBFS, paced in real time")
        %{source: "signal", signal: sweep}
    end

  :ok =
    Krait.execute_stream(
      "stream_levels",
      # A-weighted: the sweep's level rises as it climbs out of the low frequencies A-weighting cuts
      Map.merge(source, %{max_rate_hz: 10, duration_s: 3, time_weighting: "fast", weighting: "A"}),
      fn chunk ->
        case chunk["rms_dbfs"] do
          [rms | _] ->
            [peak | _] = chunk["peak_hold_dbfs"]

            Demo.live(
              "  t=#{:erlang.float_to_binary(chunk["t_s"] * 1.0, decimals: 1)}s  " <>
                "LAF #{meter.(rms)} #{rms} dBFS(A)  peak hold #{peak}"
            )

          nil ->
            IO.puts("")
        end
      end,
      pool: Demo.Audio
    )

  :ok =
    Krait.execute_stream(
      "stream_pitch",
      Map.merge(source, %{max_rate_hz: 4, duration_s: 3}),
      fn chunk ->
        if chunk["voiced"] do
          Demo.live(
            "  pitch #{chunk["frequency_hz"]} Hz  #{chunk["note"]} " <>
              "(#{chunk["cents"]} cents, confidence #{chunk["confidence"]})"
          )
        end

        if chunk.is_final, do: IO.puts("")
      end,
      pool: Demo.Audio
    )
end

# Streams both ways with audio: PCM frames made here, in Elixir (a melody of sine tones, paced in real time as
# a Membrane pipeline or a WebRTC call would deliver them), analysed live by Python as they arrive.
if File.exists?(Path.join(root, "adapters/audio")) do
  Demo.section("analyse_stream: audio frames produced in Elixir, pitch analysed live in Python")

  rate = 16_000
  frame_samples = 800

  tone = fn hz, seconds ->
    n = round(rate * seconds)

    for i <- 0..(n - 1), into: <<>> do
      <<0.5 * :math.sin(2 * :math.pi() * hz * i / rate)::float-32-little>>
    end
  end

  frames =
    [{"C4", 261.63}, {"E4", 329.63}, {"G4", 392.0}, {"C5", 523.25}]
    |> Stream.flat_map(fn {_note, hz} ->
      samples = tone.(hz, 0.5)
      for <<frame::binary-size(frame_samples * 4) <- samples>>, do: frame
    end)
    |> Stream.map(fn frame ->
      Process.sleep(div(frame_samples * 1000, rate))
      Krait.Tensor.new(frame, :float32, {frame_samples})
    end)

  :ok =
    Krait.execute_stream(
      "analyse_stream",
      %{sample_rate: rate, analysis: "pitch", max_rate_hz: 8},
      fn chunk ->
        if chunk["voiced"] do
          Demo.live(
            "  heard #{chunk["note"]} (#{chunk["frequency_hz"]} Hz) from frames sent by Elixir"
          )
        end

        if chunk.is_final, do: IO.puts("")
      end,
      pool: Demo.Audio,
      input: frames
    )
end

Demo.section("Pool stats")
IO.inspect(Map.delete(Krait.Pool.stats(), :workers), label: "  stats")

if metrics_port do
  # the endpoint wants the pool's token, as every port Krait serves does: hand it to Prometheus in a
  # file only this user can read
  # (a new name, created exclusively: a shared /tmp may hold another user's link at any fixed name)
  suffix = Base.url_encode64(:crypto.strong_rand_bytes(9))
  token_file = Path.join(System.tmp_dir!(), "krait-demo-metrics-token-" <> suffix)
  file = File.open!(token_file, [:write, :exclusive])
  File.chmod!(token_file, 0o600)
  IO.binwrite(file, Krait.Pool.stats().token)
  File.close(file)
  Demo.section("Metrics at http://127.0.0.1:#{metrics_port}/metrics: calling tools until Ctrl-C")
  IO.puts("  scrape them: scripts/prometheus #{metrics_port} #{token_file}")

  Stream.repeatedly(fn ->
    Krait.execute("add", %{a: 1, b: 2})
    Krait.execute_stream("stream_numbers", %{count: 200}, fn _ -> :ok end)
    Krait.execute("fail", %{})
    Krait.execute("slow_tool", %{seconds: :rand.uniform() / 4})
  end)
  |> Stream.with_index(1)
  |> Enum.each(fn {_, n} -> Demo.live("  rounds of calls: #{n}") end)
end
