defmodule Krait.Call.DeadlineTextTest do
  @moduledoc """
  A call past its deadline reads the same on every client, naming the deadline: the pool's own timer
  and the worker's DEADLINE_EXCEEDED (whichever notices first) give one text, and Python's client
  (`tests/test_deadline_text.py`) says it in the same words.
  """
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000
  @text "the call did not finish within its deadline of 600 ms"

  test "the text, as Python's client writes it" do
    assert Error.deadline_message(1000) ==
             "the call did not finish within its deadline of 1000 ms"

    assert Error.deadline_message(:infinity) == "the call did not finish within its deadline"
  end

  test "a worker's DEADLINE_EXCEEDED reads as the caller's own deadline" do
    # grpc-core's words; the worker's link says "deadline exceeded"
    grpc_error = %Krait.GRPC.Error{status: 4, message: "Deadline Exceeded"}

    assert %Error{category: :timeout, message: @text, details: details} =
             Error.from_grpc(grpc_error, %{worker_id: "w", call_id: "c"}, 600)

    assert %{status: 4, timeout: 600, worker_id: "w", call_id: "c"} = details
    # without the call's timeout (a caller outside Krait.Call): the transport's words stay
    assert %Error{message: "Deadline Exceeded"} = Error.from_grpc(grpc_error, %{})
  end

  for transport <- [:link, :grpc] do
    test "execute, execute_stream and stream past their deadline (#{transport})" do
      pool = start_pool!(size: 1, transport: unquote(transport))

      assert {:error, %Error{category: :timeout, message: @text, details: %{timeout: 600}}} =
               Krait.execute("slow_tool", %{seconds: 10, tag: tag()}, pool: pool, timeout: 600)

      assert {:error, %Error{category: :timeout, message: @text}} =
               Krait.execute_stream(
                 "endless_stream",
                 %{interval_ms: 20, tag: tag()},
                 fn _ -> :ok end,
                 pool: pool,
                 timeout: 600
               )

      error =
        assert_raise Error, fn ->
          Krait.stream("endless_stream", %{interval_ms: 20, tag: tag()}, pool: pool, timeout: 600)
          |> Stream.run()
        end

      assert %Error{category: :timeout, message: @text} = error
      assert Exception.message(error) == "[timeout] " <> @text
    end
  end
end
