defmodule Krait.Pool.CallsPerWorkerTest do
  # `calls_per_worker`: one real worker gives that many leases at once; one more call waits.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag timeout: 60_000

  test "a local worker runs calls_per_worker calls at once" do
    pool = start_pool!(size: 1, calls_per_worker: 3)
    hold_and_queue(pool, 3)
  end

  test "a session stays on its worker when that worker has room" do
    pool = start_pool!(size: 2, calls_per_worker: 2)
    s = "s#{System.unique_integer([:positive])}"
    count = fn -> Krait.execute("session_counter", %{}, pool: pool, session_id: s) end
    assert {:ok, %{"count" => 1, "worker_id" => wid}} = count.()
    assert {:ok, %{"count" => 2, "worker_id" => ^wid}} = count.()
  end
end
