defmodule Krait.Pool.SessionDeathTest do
  # What a session's calls get once its worker has died (SIGKILL).
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000

  test "strict modes answer :session_worker_unavailable, :hint moves to a live worker" do
    pool = start_pool!(size: 2, backoff_min: 2_000)
    s = "doomed"

    {:ok, %{"worker_id" => w, "count" => 1}} =
      Krait.execute("session_counter", %{}, pool: pool, session_id: s)

    os_pid = Enum.find(Krait.Pool.stats(pool).workers, &(&1.id == w)).os_pid
    os_kill(os_pid)
    assert eventually(fn -> Krait.Pool.stats(pool).ready == 1 end)

    for affinity <- [:strict_queue, :strict_fail_fast] do
      assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
               Krait.execute("session_counter", %{}, pool: pool, session_id: s, affinity: affinity)
    end

    assert {:ok, %{"worker_id" => other, "count" => 1}} =
             Krait.execute("session_counter", %{}, pool: pool, session_id: s, affinity: :hint)

    assert other != w
    # the session now lives on its new worker, for every mode
    assert {:ok, %{"worker_id" => ^other, "count" => 2}} =
             Krait.execute("session_counter", %{},
               pool: pool,
               session_id: s,
               affinity: :strict_queue
             )
  end
end
