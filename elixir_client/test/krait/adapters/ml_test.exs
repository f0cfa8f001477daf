defmodule Krait.Adapters.MLTest do
  @moduledoc """
  adapters.ml through the Elixir pool: real training streams epochs into a callback, and the trained
  model stays with the session's worker for the calls that follow.
  """
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag timeout: 120_000

  setup_all do
    # two workers, so a session really has to stay on the worker that holds its model
    %{pool: start_module_pool!(adapter: "adapters.ml:MLAdapter", size: 2)}
  end

  test "training streams one chunk per epoch, the loss falls, held-out accuracy is real", %{
    pool: pool
  } do
    test = self()

    opts = [
      pool: pool,
      session_id: "ml-#{System.unique_integer([:positive])}",
      affinity: :strict_queue
    ]

    assert :ok =
             Krait.execute_stream(
               "train_model",
               %{epochs: 6, seed: 1},
               fn chunk -> send(test, {:chunk, chunk}) end,
               opts
             )

    chunks = received_chunks()
    {progress, [final]} = Enum.split(chunks, -1)
    assert Enum.map(progress, & &1["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert Enum.all?(progress, &(&1["type"] == "progress"))
    losses = Enum.map(progress, & &1["loss"])
    assert List.last(losses) < List.first(losses) / 2
    assert List.last(progress)["val_accuracy"] > 0.85

    assert final.is_final and final["type"] == "complete" and final["kept"] == true
    assert %{"execution_time_ms" => _, "worker_id" => _, "tool_type" => "remote"} = final.metadata
    model_id = final["model_id"]

    # the same session, strictly on its worker: the model is there
    assert {:ok, %{"accuracy" => accuracy}} =
             Krait.execute("evaluate", %{model_id: model_id}, opts)

    assert_in_delta accuracy, List.last(progress)["val_accuracy"], 1.0e-9

    assert {:ok, %{"model_id" => ^model_id, "predictions" => [_, _, _]}} =
             Krait.execute("predict", %{model_id: model_id, indices: [0, 1, 2]}, opts)

    # another session does not see it
    other = Keyword.put(opts, :session_id, "ml-other-#{System.unique_integer([:positive])}")

    assert {:error, %Krait.Error{category: :python, message: message}} =
             Krait.execute("evaluate", %{model_id: model_id}, other)

    assert message =~ "unknown model_id"
  end

  test "bad hyperparameters come back as a Python error naming them", %{pool: pool} do
    assert {:error, %Krait.Error{category: :python, details: %{type: "ValueError"}} = error} =
             Krait.execute_stream("train_model", %{epochs: 0}, fn _ -> :ok end, pool: pool)

    assert error.message =~ "epochs must be > 0"
  end

  test "halting the stream early cancels training on the worker", %{pool: pool} do
    session = "ml-cancel-#{System.unique_integer([:positive])}"
    opts = [pool: pool, session_id: session, affinity: :strict_queue]

    assert [%Krait.Chunk{} = first] =
             Krait.stream("train_model", %{epochs: 500, hidden: 256}, opts) |> Enum.take(1)

    assert first["epoch"] == 1

    # the run ends as cancelled, long before 500 epochs
    run =
      eventually(fn ->
        {:ok, %{"runs" => runs}} = Krait.execute("training_runs", %{}, opts)
        Enum.find(runs, &(&1["state"] != "running"))
      end)

    assert run["state"] == "cancelled"
    assert run["epochs_done"] < 500
  end
end
