defmodule Krait.Pool.FailFastTest do
  # A pool whose workers cannot start answers at once with the start error instead of letting calls
  # wait for their timeout, keeps retrying, and serves once a worker comes up.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000

  defp start_broken_pool(overrides) do
    name = :"KraitBroken#{System.unique_integer([:positive])}"
    opts = pool_opts([name: name, backoff_min: 100, backoff_max: 400] ++ overrides)
    start_supervised!({Krait.Pool, opts}, id: name)
    name
  end

  test "a broken adapter returns :workers_failing with the import error within 2 s" do
    capture_log(fn ->
      started = System.monotonic_time(:millisecond)
      pool = start_broken_pool(adapter: "no_such_module:Nope", size: 2)

      # The call is made before any worker has failed: it waits, then fails fast.
      assert {:error, %Error{category: :pool, details: details} = error} =
               Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 60_000)

      # Far sooner than the call's 60 s timeout: a worker's failed start (Python, imports) takes a few
      # hundred ms here, and the error follows it at once.
      assert System.monotonic_time(:millisecond) - started < 5_000
      assert details.reason == :workers_failing
      assert details.last_error =~ "No module named 'no_such_module'"
      assert error.message =~ "No module named 'no_such_module'"
      assert {:exit_status, status} = details.exit
      assert status != 0

      # New callers get it at once too, and so does await_ready.
      assert {:error, %Error{details: %{reason: :workers_failing}}} =
               Krait.execute("add", %{a: 1, b: 1}, pool: pool)

      assert {:error, %Error{details: %{reason: :workers_failing}}} =
               Krait.Pool.await_ready(pool, 10_000)

      assert %{failing: %{output: output}} = Krait.Pool.stats(pool)
      assert output =~ "no_such_module"

      # ... while restarts go on in the background.
      assert eventually(fn -> Enum.all?(Krait.Pool.stats(pool).workers, &(&1.restarts >= 2)) end)
    end)
  end

  test "a python without Krait fails fast too" do
    capture_log(fn ->
      pool = start_broken_pool(python: System.find_executable("python3"), cwd: "/", size: 1)

      assert {:error, %Error{details: %{reason: :workers_failing, last_error: output}}} =
               Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 60_000)

      assert output =~ "python_worker"
    end)
  end

  test "the pool serves again once a worker comes up" do
    gate = Path.join(System.tmp_dir!(), "krait-gate-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(gate) end)

    capture_log(fn ->
      pool =
        start_broken_pool(
          adapter: "tests.fixtures.gated:GatedAdapter",
          size: 1,
          env: %{"KRAIT_TEST_GATE" => gate}
        )

      assert {:error, %Error{details: %{reason: :workers_failing, last_error: output}}} =
               Krait.execute("echo", %{value: "x"}, pool: pool, timeout: 60_000)

      assert output =~ "refuses to load"

      File.write!(gate, "")
      assert :ok = Krait.Pool.await_ready(pool, 20_000) |> retry_await(pool)
      assert {:ok, "x"} = Krait.execute("echo", %{value: "x"}, pool: pool)
      assert %{failing: nil, ready: 1} = Krait.Pool.stats(pool)
    end)
  end

  # await_ready answers :workers_failing at once while the pool is still failing: wait for the next
  # restart (backoff at most 400 ms here) to pick up the open gate.
  defp retry_await(:ok, _pool), do: :ok

  defp retry_await({:error, %Error{details: %{reason: :workers_failing}}}, pool) do
    eventually(fn -> Krait.Pool.stats(pool).ready == 1 end, 20_000)
    :ok
  end
end
