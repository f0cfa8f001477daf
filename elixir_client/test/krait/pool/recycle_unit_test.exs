defmodule Krait.Pool.RecycleUnitTest do
  # Krait.Pool.Recycle's helpers for the scheduler: the log's reason and the age re-check.
  use ExUnit.Case, async: true

  alias Krait.Pool.Recycle

  test "due_text" do
    w = %{given: 7, ready_at: 100, rss_mb: 12}
    assert Recycle.due_text(:calls, w, 0) == "7 calls given"
    assert Recycle.due_text(:age, w, 350) == "up 250 ms"
    assert Recycle.due_text(:rss_mb, w, 0) == "12.0 MiB resident"
  end

  test "recheck_in: an up worker not due with an age limit, at least 10 ms" do
    w = %{recycle: nil, status: :idle, ready_at: 0, age_limit: 10_000}
    # startup 0 ms: lead 50 ms, so 9,950 ms from ready
    assert Recycle.recheck_in(w, 0, 1_000) == 8_950
    assert Recycle.recheck_in(%{w | status: :busy}, 0, 9_945) == 10
    assert Recycle.recheck_in(w, 0, 20_000) == 10
    assert Recycle.recheck_in(%{w | recycle: :age}, 0, 0) == nil
    assert Recycle.recheck_in(%{w | status: :retiring}, 0, 0) == nil
    assert Recycle.recheck_in(%{w | age_limit: nil}, 0, 0) == nil
    assert Recycle.recheck_in(nil, 0, 0) == nil
  end
end
