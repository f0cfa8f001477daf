defmodule Krait.ChunkTest do
  use ExUnit.Case, async: true

  alias Krait.{Chunk, Payload, Tensor}

  defp proto(data, ct, opts \\ []) do
    %Krait.Proto.ToolChunk{
      seq: opts[:seq] || 0,
      data: data,
      content_type: ct,
      is_final: opts[:final] || false,
      metadata: opts[:metadata] || %{}
    }
  end

  test "JSON chunks: Access on the decoded map" do
    {:ok, chunk} =
      Chunk.from_proto(proto(~s({"epoch": 3, "loss": 0.5}), "application/json", seq: 2))

    assert chunk["epoch"] == 3
    assert chunk[:loss] == 0.5
    assert chunk["missing"] == nil
    assert chunk.seq == 2 and chunk.content_type == "application/json"
    assert get_in(chunk, ["epoch"]) == 3
    assert %Chunk{data: %{"epoch" => 4}} = put_in(chunk["epoch"], 4)
    assert {3, %Chunk{data: data}} = Access.pop(chunk, :epoch)
    refute Map.has_key?(data, "epoch")
  end

  test "a payload-less synthetic final chunk" do
    meta = %{"synthetic_final" => "true", "worker_id" => "w"}
    {:ok, chunk} = Chunk.from_proto(proto("", "", final: true, metadata: meta))
    assert chunk.data == nil and chunk.is_final and Chunk.synthetic_final?(chunk)
    assert chunk["anything"] == nil
  end

  test "non-map payloads answer nil to Access" do
    {:ok, chunk} = Chunk.from_proto(proto("[1, 2]", "application/json"))
    assert chunk.data == [1, 2] and chunk["x"] == nil
    {:ok, chunk} = Chunk.from_proto(proto("hi", "text/plain; charset=utf-8"))
    assert chunk.data == "hi" and chunk["x"] == nil
  end

  test "payload decoding by content type" do
    npy = Tensor.from_list([1, 2], :int16) |> Tensor.to_npy() |> IO.iodata_to_binary()
    assert {:ok, %Tensor{dtype: :int16}} = Payload.decode(npy, "application/x-npy")
    assert {:ok, <<1, 2>>} = Payload.decode(<<1, 2>>, "application/octet-stream")
    assert {:ok, %{"a" => nil}} = Payload.decode(~s({"a": null}), "application/json")

    assert {:ok, 12_345_678_901_234_567_890} =
             Payload.decode("12345678901234567890", "application/json")

    assert {:ok, %{"a" => 1}} = Payload.decode(~s({"a": 1}), "Application/JSON; charset=utf-8")
    assert {:error, _} = Payload.decode("{nope", "application/json")
    assert {:error, _} = Chunk.from_proto(proto("{nope", "application/json"))
  end

  test "arguments: JSON, tensors and bytes" do
    t = Tensor.from_list([1.0], :float64)

    assert {:ok, json, binaries} =
             Payload.encode_args(%{a: 1, b: [nil, "x"], t: t, blob: {:binary, "raw"}})

    assert Krait.JSON.decode!(IO.iodata_to_binary(json)) == %{"a" => 1, "b" => [nil, "x"]}

    assert %{"t" => {_npy, "application/x-npy"}, "blob" => {"raw", "application/octet-stream"}} =
             binaries

    assert {:ok, "", %{}} = Payload.encode_args(%{})
    assert {:ok, _, _} = Payload.encode_args(steps: 3)
    assert {:error, _} = Payload.encode_args([1, 2])
    assert {:error, _} = Payload.encode_args(%{a: {:tuple}})
  end

  test "Krait.JSON has a backend" do
    assert Krait.JSON.backend() != :none

    assert Krait.JSON.decode!(
             IO.iodata_to_binary(Krait.JSON.encode!(%{"k" => [1, 2.5, true, nil]}))
           ) ==
             %{"k" => [1, 2.5, true, nil]}
  end
end
