defmodule Krait.WorkerLogTest do
  # A worker's Python log records reach Logger as one event each, at their level, traceback included,
  # with the worker, tool, session and call in their metadata.
  use ExUnit.Case, async: false

  import Krait.TestHelpers
  alias Krait.Test.LogForwarder

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_module_pool!(adapter: "tests.fixtures.hostile:HostileAdapter", size: 1)}
  end

  test "a record with a traceback is one event at its level, with call metadata", %{pool: pool} do
    LogForwarder.attach()
    word = "w#{System.unique_integer([:positive])}"

    assert {:ok, ^word} =
             Krait.execute("log_records", %{message: word}, pool: pool, session_id: "s-" <> word)

    assert_receive {:log, :warning, "warning: " <> ^word, warning_meta}, 5_000
    assert_receive {:log, :error, error_text, error_meta}, 5_000

    # one event: the message and its whole traceback
    assert error_text =~ "error with traceback: #{word}"
    assert error_text =~ "Traceback (most recent call last)"
    assert error_text =~ "RuntimeError: #{word}"

    for meta <- [warning_meta, error_meta] do
      assert meta.worker_id =~ ~r/^KraitModulePool\d+-1\.\d+$/
      assert meta.tool == "log_records"
      assert meta.session_id == "s-" <> word
      assert is_binary(meta.call_id) and meta.call_id != ""
    end

    assert warning_meta.call_id == error_meta.call_id
    # no stray event for a traceback line
    refute_receive {:log, _, "Traceback" <> _, _}, 100
  end

  test "a traced call's records carry its trace id", %{pool: pool} do
    LogForwarder.attach()
    word = "t#{System.unique_integer([:positive])}"
    trace_id = Base.encode16(:crypto.strong_rand_bytes(16), case: :lower)
    traceparent = "00-#{trace_id}-#{Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)}-01"

    assert {:ok, ^word} =
             Krait.execute("log_records", %{message: word}, pool: pool, trace_context: traceparent)

    assert_receive {:log, :warning, "warning: " <> ^word, meta}, 5_000
    assert meta.trace_id == trace_id
  end

  test "an error's call id is the one the worker's records carry", %{pool: pool} do
    LogForwarder.attach()

    assert {:error, %Krait.Error{details: %{call_id: call_id}}} =
             Krait.execute("log_records", %{message: 42}, pool: pool)

    # the worker logs the refused call as one warning line, with the same call id
    assert_receive {:log, :warning, text, %{call_id: ^call_id}}, 5_000
    assert text =~ "log_records"
    refute text =~ "Traceback"
  end

  test "a tool's prints never corrupt the link: they arrive as log records", %{pool: pool} do
    # stdout arrives at :info, below the tests' usual level
    level = Logger.level()
    Logger.configure(level: :info)
    on_exit(fn -> Logger.configure(level: level) end)
    LogForwarder.attach()
    word = "p#{System.unique_integer([:positive])}"
    test = self()

    assert :ok =
             Krait.execute_stream(
               "print_noise",
               %{message: word, count: 3},
               &send(test, {:chunk, &1}),
               pool: pool
             )

    assert [0, 1, 2, nil] = Enum.map(received_chunks(), & &1["n"])

    # every line, whichever way it was written, reaches Logger (stdout at :info, stderr at :warning)
    texts = collect_logs([])

    for n <- 0..2, way <- ["print", "stderr", "fd1", "fd2"] do
      assert Enum.any?(texts, &String.contains?(&1, "#{word} #{way} #{n}")),
             "#{word} #{way} #{n} missing"
    end

    # and the worker still answers
    assert {:ok, ^word} = Krait.execute("log_records", %{message: word}, pool: pool)
  end

  defp collect_logs(acc) do
    receive do
      {:log, _level, text, _meta} -> collect_logs([text | acc])
    after
      500 -> acc
    end
  end
end
