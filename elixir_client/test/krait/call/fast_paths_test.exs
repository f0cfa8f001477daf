defmodule Krait.Call.FastPathsTest do
  # The call path's shortcuts give what the general path gives: the options most calls pass checked
  # without walking the schema, a stream batch's JSON payloads decoded with one call of the library.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  alias Krait.{Call, Chunk}
  alias Krait.Proto.ToolChunk

  describe "options" do
    for opts <- [
          [],
          [pool: :some_pool],
          [timeout: 5],
          [timeout: :infinity],
          [pool: :some_pool, timeout: 1],
          [timeout: 250, pool: :some_pool]
        ] do
      test "#{inspect(opts)}: the same as Krait.Options.validate/2" do
        opts = unquote(Macro.escape(opts))
        assert {:ok, fast} = Call.fast_options(opts)
        assert {:ok, slow} = Krait.Options.validate(opts, Call.schema())
        assert fast == slow
      end
    end

    for opts <- [
          [pool: nil],
          [pool: "p"],
          [timeout: 0],
          [timeout: -1],
          [timeout: "5"],
          [pool: :a, pool: :b],
          [pool: :a, timeout: 5, session_id: "s"],
          [metadata: %{}],
          :not_a_list
        ] do
      test "#{inspect(opts)}: left to the general path" do
        assert Call.fast_options(unquote(Macro.escape(opts))) == :slow
      end
    end

    test "a call with the fast options runs, and a bad timeout is still refused" do
      pool = start_pool!(size: 1)
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, timeout: 10_000, pool: pool)

      assert {:error, %Krait.Error{category: :invalid_argument}} =
               Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 0)
    end
  end

  describe "a batch's chunks" do
    defp proto(seq, data, ct, final \\ false),
      do: %ToolChunk{
        seq: seq,
        data: data,
        content_type: ct,
        is_final: final,
        metadata: %{"k" => "v"}
      }

    defp one_by_one(protos) do
      Enum.reduce_while(protos, {:ok, []}, fn p, {:ok, acc} ->
        case Chunk.from_proto(p) do
          {:ok, c} -> {:cont, {:ok, acc ++ [c]}}
          error -> {:halt, error}
        end
      end)
    end

    test "JSON payloads decoded together, other payloads as they are, in order" do
      protos = [
        proto(0, ~s({"i": 0}), "application/json"),
        proto(1, "raw", "application/octet-stream"),
        proto(2, ~s([1, {"a": null}]), "application/json"),
        proto(3, "text", "text/plain"),
        proto(4, ~s("s"), "application/json"),
        proto(5, "", "", true)
      ]

      assert {:ok, chunks} = Chunk.from_protos(protos)
      assert {:ok, chunks} == one_by_one(protos)

      assert Enum.map(chunks, & &1.data) == [
               %{"i" => 0},
               "raw",
               [1, %{"a" => nil}],
               "text",
               "s",
               nil
             ]

      assert List.last(chunks).is_final
    end

    test "an undecodable payload is the one chunk's error, whatever its neighbours" do
      for bad <- ["{", "1, 2", "", "]"] do
        protos = [
          proto(0, ~s({"i": 0}), "application/json"),
          proto(1, bad, "application/json"),
          proto(2, ~s({"i": 2}), "application/json")
        ]

        assert Chunk.from_protos(protos) == {:error, "invalid JSON payload"}
        assert Chunk.from_protos(protos) == one_by_one(protos)
      end
    end

    test "JSON in a content type with parameters takes the general path" do
      protos = [
        proto(0, ~s({"i": 0}), "Application/JSON; charset=utf-8"),
        proto(1, ~s({"i": 1}), "application/json"),
        proto(2, ~s({"i": 2}), "application/json")
      ]

      assert {:ok, [%{data: %{"i" => 0}}, %{data: %{"i" => 1}}, %{data: %{"i" => 2}}]} =
               Chunk.from_protos(protos)
    end

    test "Krait.JSON.decode_many/1: one term per document, or :error" do
      assert {:ok, [1, %{"a" => 2}, "x"]} = Krait.JSON.decode_many(["1", ~s({"a": 2}), ~s("x")])
      assert :error = Krait.JSON.decode_many(["1, 2", "3"])
      assert :error = Krait.JSON.decode_many(["1", "{"])
    end
  end
end
