defmodule Krait.Pool.StartFailure do
  @moduledoc """
  How a worker's failed start is reported: one log line with its attempt number, cause (the last
  line of the worker's output), backoff and whether the pool now fails fast; shown at `:error` for
  attempts 1-3, then attempts 4, 8, 16... (the log thins out as the backoff grows), and at least
  once every `@every` ms; the others at `:debug`.
  """

  @every 600_000

  @doc """
  The level and text of the line for a failed start of slot `slot` (its `failures` in a row,
  `logged_at` the last line shown, `backoff` before its next attempt), `error` the start error,
  `now_failing?` whether this failure made the pool failing.
  """
  @spec log_line(
          %{
            failures: non_neg_integer(),
            logged_at: integer() | nil,
            backoff: pos_integer() | nil
          },
          %{worker_id: String.t() | nil, reason: term(), output: String.t()},
          boolean(),
          integer()
        ) :: {:error | :debug, String.t()}
  def log_line(slot, error, now_failing?, now) do
    attempt = slot.failures

    shown? =
      attempt <= 3 or Bitwise.band(attempt, attempt - 1) == 0 or slot.logged_at == nil or
        now - slot.logged_at >= @every

    cause =
      case error.output |> String.split("\n", trim: true) |> List.last() do
        nil -> ""
        line -> ": " <> line
      end

    fast = if now_failing?, do: "; no worker is up: calls fail fast until one starts", else: ""

    text =
      "Krait worker #{error.worker_id} failed to start (attempt #{attempt}, " <>
        "#{reason(error.reason)})#{cause}; next attempt in #{slot.backoff} ms#{fast}"

    {if(shown?, do: :error, else: :debug), text}
  end

  defp reason({:exit_status, code}), do: "exit status #{code}"
  defp reason(:startup_timeout), do: "not ready within its startup_timeout"
  defp reason(reason), do: inspect(reason)
end
