defmodule Krait.Worker.Output do
  @moduledoc """
  A worker's output on its way to `Logger`: Python log records (whole, traceback included, with the
  call they come from as Logger metadata) and anything else the process writes, plus the last of it,
  kept for the log of a failed start or an exit and for the pool's `last_error`.

  Records arrive as `LOG` frames over the local link (`Krait.Proto.LogRecord`) or, from a worker
  serving gRPC, as `KRAIT_LOG {json}` lines (`docs/logging.md`); other lines arriving within
  20 ms of each other are logged as one event, at `:error` when they hold a traceback.
  """

  require Logger

  @tail_lines 40
  @tail_shown 12
  @raw_flush_ms 20

  defstruct tail: :queue.new(), tail_len: 0, raw: [], raw_timer: nil

  @type t :: %__MODULE__{
          tail: :queue.queue(String.t()),
          tail_len: non_neg_integer(),
          raw: [String.t()],
          raw_timer: reference() | nil
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
    Logger.log(level, text, [python_logger: field(record, :logger)] ++ metadata)
    remember(out, text)
  end

  @doc "A line of other output: buffered briefly so that a multi-line print is one event."
  @spec raw(t(), String.t()) :: t()
  def raw(out, line) do
    timer = out.raw_timer || Process.send_after(self(), :flush_raw, @raw_flush_ms)
    %{out | raw: [line | out.raw], raw_timer: timer}
  end

  @doc "Logs the buffered raw lines now (on `:flush_raw`, and before anything else is logged)."
  @spec flush(t()) :: t()
  def flush(%{raw: []} = out), do: out

  def flush(out) do
    if out.raw_timer, do: Process.cancel_timer(out.raw_timer)
    text = out.raw |> Enum.reverse() |> Enum.join("\n")

    level =
      if String.contains?(text, "Traceback (most recent call last)"), do: :error, else: :info

    Logger.log(level, text)
    remember(%{out | raw: [], raw_timer: nil}, text)
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
