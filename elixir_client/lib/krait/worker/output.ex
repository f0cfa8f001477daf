defmodule Krait.Worker.Output do
  @moduledoc """
  A worker's output on its way to `Logger`: Python log records (whole, traceback included, with the
  call they come from as Logger metadata) and anything else the process writes, plus the last of it,
  kept for the log of a failed start or an exit and for the pool's `last_error`.

  Records arrive as `LOG` frames over the local link (`Krait.Proto.LogRecord`) or, from a worker
  serving gRPC, as `KRAIT_LOG {json}` lines (`docs/logging.md`); other lines arriving within
  20 ms of each other are logged as one event, at `:error` when they hold a traceback.

  While a worker starts, its output at `:warning` and above is held (`hold: true`): a start that
  fails is reported by the pool as one line naming the cause (the last of this output), and what
  was held is then logged at `:debug` (`discard/1`); a worker that becomes ready logs it at its own
  level (`release/1`). Everything is logged with the worker's `worker_id` metadata (the worker
  process's own).
  """

  require Logger

  @tail_lines 40
  @tail_shown 12
  @raw_flush_ms 20

  defstruct tail: :queue.new(), tail_len: 0, raw: [], raw_timer: nil, hold: false, held: []

  @type t :: %__MODULE__{
          tail: :queue.queue(String.t()),
          tail_len: non_neg_integer(),
          raw: [String.t()],
          raw_timer: reference() | nil,
          hold: boolean(),
          held: [{Logger.level(), String.t(), keyword()}]
        }

  @doc "Logs a record (a `Krait.Proto.LogRecord` or its JSON form, string keys)."
  @spec record(t(), map()) :: t()
  def record(out, %{} = record) do
    message = field(record, :message)

    text =
      case field(record, :exception) do
        "" -> message
        exc -> message <> "\n" <> exc
      end

    metadata =
      for key <- [:tool, :session_id, :call_id, :trace_id],
          (value = field(record, key)) != "",
          do: {key, value}

    level = level(field(record, :level))
    out = log(out, level, text, [python_logger: field(record, :logger)] ++ metadata)
    remember(out, text)
  end

  @doc "Logs what was held during the start at its own level, and stops holding: the worker is up."
  @spec release(t()) :: t()
  def release(out) do
    out = flush(out)
    Enum.each(Enum.reverse(out.held), fn {level, text, meta} -> Logger.log(level, text, meta) end)
    %{out | hold: false, held: []}
  end

  @doc "Logs what was held at `:debug`: the start failed, and the pool's one line names the cause."
  @spec discard(t()) :: t()
  def discard(out) do
    out = flush(out)

    Enum.each(Enum.reverse(out.held), fn {level, text, meta} ->
      Logger.debug(text, [held_level: level] ++ meta)
    end)

    %{out | hold: false, held: []}
  end

  defp log(%{hold: true} = out, level, text, meta) do
    if Logger.compare_levels(level, :warning) == :lt do
      Logger.log(level, text, meta)
      out
    else
      %{out | held: [{level, text, meta} | out.held]}
    end
  end

  defp log(out, level, text, meta) do
    Logger.log(level, text, meta)
    out
  end

  @doc "A line of other output: buffered briefly so that a multi-line print is one event."
  @spec raw(t(), String.t()) :: t()
  def raw(out, line) do
    timer = out.raw_timer || Process.send_after(self(), :flush_raw, @raw_flush_ms)
    %{out | raw: [line | out.raw], raw_timer: timer}
  end

  @doc """
  What the process wrote to its stderr before the worker took it over (an interpreter that fails
  before `python_worker` runs): one event at `:warning`, held while the worker starts.
  """
  @spec stderr(t(), String.t()) :: t()
  def stderr(out, text) do
    text = String.trim_trailing(text)

    if text == "" do
      out
    else
      out |> flush() |> log(:warning, text, []) |> remember(text)
    end
  end

  @doc "Logs the buffered raw lines now (on `:flush_raw`, and before anything else is logged)."
  @spec flush(t()) :: t()
  def flush(%{raw: []} = out), do: out

  def flush(out) do
    if out.raw_timer, do: Process.cancel_timer(out.raw_timer)
    text = out.raw |> Enum.reverse() |> Enum.join("\n")

    level =
      if String.contains?(text, "Traceback (most recent call last)"), do: :error, else: :info

    out = log(%{out | raw: [], raw_timer: nil}, level, text, [])
    remember(out, text)
  end

  @doc "Remembers `text` as output without logging it."
  @spec remember(t(), String.t()) :: t()
  def remember(out, text) do
    tail = :queue.in(text, out.tail)

    if out.tail_len >= @tail_lines,
      do: %{out | tail: :queue.drop(tail)},
      else: %{out | tail: tail, tail_len: out.tail_len + 1}
  end

  @doc "The remembered output, oldest first."
  @spec lines(t()) :: [String.t()]
  def lines(out), do: :queue.to_list(out.tail)

  @doc "The last few remembered lines, as a suffix for a log message (empty when there are none)."
  @spec tail_text(t()) :: String.t()
  def tail_text(%{tail_len: 0}), do: ""

  def tail_text(out) do
    "; last output:\n" <> (out |> lines() |> Enum.take(-@tail_shown) |> Enum.join("\n"))
  end

  defp field(record, key) when is_struct(record), do: Map.get(record, key) || ""

  defp field(record, key) do
    case Map.get(record, Atom.to_string(key)) do
      value when is_binary(value) -> value
      _ -> ""
    end
  end

  defp level("DEBUG"), do: :debug
  defp level("INFO"), do: :info
  defp level("WARNING"), do: :warning
  defp level("CRITICAL"), do: :critical
  defp level(_), do: :error
end
