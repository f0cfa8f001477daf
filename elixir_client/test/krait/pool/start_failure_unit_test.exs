defmodule Krait.Pool.StartFailureUnitTest do
  # Krait.Pool.StartFailure: the failed start's log line, without a process.
  use ExUnit.Case, async: true

  alias Krait.Pool.StartFailure

  @error %{worker_id: "p-1.0", reason: {:exit_status, 1}, output: "booting\nImportError: x\n"}

  defp slot(failures, logged_at \\ 0),
    do: %{failures: failures, logged_at: logged_at, backoff: 200}

  test "the text: attempt, reason, the output's last line, backoff, fail fast" do
    assert {:error, text} = StartFailure.log_line(slot(1, nil), @error, true, 0)

    assert text ==
             "Krait worker p-1.0 failed to start (attempt 1, exit status 1): ImportError: x; " <>
               "next attempt in 200 ms; no worker is up: calls fail fast until one starts"

    error = %{@error | reason: :startup_timeout, output: ""}
    assert {_, text} = StartFailure.log_line(slot(2), error, false, 0)
    assert text =~ "(attempt 2, not ready within its startup_timeout); next attempt in 200 ms"
    refute text =~ "fail fast"
    assert {_, text} = StartFailure.log_line(slot(2), %{error | reason: :enoent}, false, 0)
    assert text =~ "(attempt 2, :enoent); next"
  end

  test "shown for attempts 1-3, then powers of two, or when none was shown for 10 minutes" do
    levels =
      for n <- 1..17, do: n |> slot() |> StartFailure.log_line(@error, false, 1_000) |> elem(0)

    shown = for {:error, n} <- Enum.zip(levels, 1..17), do: n
    assert shown == [1, 2, 3, 4, 8, 16]
    assert {:error, _} = StartFailure.log_line(slot(5, nil), @error, false, 1_000)
    assert {:debug, _} = StartFailure.log_line(slot(5, 1), @error, false, 600_000)
    assert {:error, _} = StartFailure.log_line(slot(5, 0), @error, false, 600_000)
  end
end
