defmodule Krait.WorkerOutputTest do
  # Krait.Worker.Output while a worker starts: output at :warning and above is held, and once the
  # worker is ready release/1 logs it at its own level, in the order it came, with its metadata,
  # then stops holding (discard/1, for a failed start, logs it at :debug instead).
  # Pure data plus Logger: the events are read back through Krait.Test.LogForwarder.
  use ExUnit.Case, async: false

  alias Krait.Test.LogForwarder
  alias Krait.Worker.Output

  setup do
    # the suite logs at :warning; this module's :info and :debug events are part of what is checked
    Logger.put_module_level(Output, :debug)
    on_exit(fn -> Logger.delete_module_level(Output) end)
    LogForwarder.attach()
    %{word: "w#{System.unique_integer([:positive])}"}
  end

  defp record(level, message, extra \\ %{}) do
    Map.merge(
      %{"level" => level, "message" => message, "logger" => "shop", "tool" => "greet"},
      extra
    )
  end

  # this test's events (the forwarder sees every process's), in order
  defp events(word) do
    receive do
      {:log, level, text, meta} ->
        if String.contains?(text, word),
          do: [{level, text, meta} | events(word)],
          else: events(word)
    after
      200 -> []
    end
  end

  test "held while starting, then released at their own levels, in order, with metadata", %{
    word: w
  } do
    out =
      %Output{hold: true}
      |> Output.record(record("WARNING", "careful #{w}", %{"session_id" => "s1"}))
      |> Output.record(record("INFO", "info #{w}"))
      |> Output.record(record("ERROR", "broke #{w}", %{"exception" => "Traceback #{w}"}))
      |> Output.stderr("stderr #{w}\n")
      |> Output.raw("raw one #{w}")
      |> Output.raw("Traceback (most recent call last): #{w}")

    # below :warning goes out at once; the rest waits
    assert [{:info, "info " <> _, _}] = events(w)
    assert out.hold
    assert length(out.held) == 3

    released = Output.release(out)
    assert %Output{hold: false, held: [], raw: [], raw_timer: nil} = released

    assert [
             {:warning, "careful " <> _, warning_meta},
             {:error, error_text, error_meta},
             {:warning, "stderr " <> _, _},
             # the raw lines still buffered are flushed and logged too, as one event, last
             {:error, raw_text, _}
           ] = events(w)

    assert error_text == "broke #{w}\nTraceback #{w}"
    assert raw_text == "raw one #{w}\nTraceback (most recent call last): #{w}"
    assert warning_meta.python_logger == "shop"
    assert warning_meta.tool == "greet"
    assert warning_meta.session_id == "s1"
    assert error_meta.tool == "greet"
    refute Map.has_key?(error_meta, :held_level)

    # every line is still remembered for last_error, oldest first
    assert Output.lines(released) |> Enum.map(&String.replace(&1, w, "")) == [
             "careful ",
             "info ",
             "broke \nTraceback ",
             "stderr ",
             "raw one \nTraceback (most recent call last): "
           ]

    # ready: a later warning is logged at once, nothing is held
    after_release = Output.record(released, record("WARNING", "later #{w}"))
    assert after_release.held == []
    assert [{:warning, "later " <> _, _}] = events(w)

    # releasing again logs nothing more
    assert %Output{hold: false, held: []} = Output.release(after_release)
    assert [] = events(w)
  end

  test "release with nothing held logs nothing and stops holding", %{word: w} do
    assert %Output{hold: false, held: []} = Output.release(%Output{hold: true})
    out = Output.record(%Output{hold: false}, record("CRITICAL", "now #{w}"))
    assert [{:critical, "now " <> _, _}] = events(w)
    assert out.held == []
  end

  test "discard (a failed start) logs what was held at :debug, saying its level", %{word: w} do
    out =
      %Output{hold: true}
      |> Output.record(record("ERROR", "failed #{w}"))
      |> Output.stderr("stderr #{w}")

    assert [] = events(w)
    assert %Output{hold: false, held: []} = Output.discard(out)

    assert [{:debug, "failed " <> _, m1}, {:debug, "stderr " <> _, m2}] = events(w)
    assert m1.held_level == :error
    assert m2.held_level == :warning
  end
end
