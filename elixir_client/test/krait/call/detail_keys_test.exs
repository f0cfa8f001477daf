defmodule Krait.Call.DetailKeysTest do
  @moduledoc """
  One key type per map in what Krait returns (`Krait.Error`'s "Keys"): Krait's own keys are atoms,
  JSON from Python keeps string keys in a map of its own (`details.fields`, a tool's schemas).
  """
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.Error

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_module_pool!(adapter: "tests.fixtures.modern:ModernAdapter", size: 1)}
  end

  # every map in `term` has keys of one type; returns the offending maps
  defp mixed(term) when is_struct(term), do: term |> Map.from_struct() |> mixed()

  defp mixed(%{} = map) do
    kinds = map |> Map.keys() |> Enum.map(&is_atom/1) |> Enum.uniq()
    own = if length(kinds) > 1, do: [map], else: []
    own ++ Enum.flat_map(Map.values(map), &mixed/1)
  end

  defp mixed(list) when is_list(list), do: Enum.flat_map(list, &mixed/1)
  defp mixed(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> mixed()
  defp mixed(_), do: []

  defp atom_keys?(map), do: map |> Map.keys() |> Enum.all?(&is_atom/1)

  test "errors of every kind: atom keys, the exception's fields in details.fields", %{pool: pool} do
    errors = [
      Krait.execute("quota", %{retry_after: 1.5}, pool: pool),
      Krait.execute("declared", %{}, pool: pool),
      Krait.execute("plain_error", %{}, pool: pool),
      Krait.execute("add", %{a: 1, b: "two"}, pool: pool),
      Krait.execute("no_such_tool", %{}, pool: pool),
      Krait.execute("add", %{a: 1, b: 2}, pool: pool, timout: 5),
      Krait.execute("add", %{a: 1, b: 2}, pool: NoSuchPoolForKeys)
    ]

    for {:error, %Error{details: details} = error} <- errors do
      assert atom_keys?(details), inspect(error)
      assert mixed(details) == [], inspect(error)
    end

    assert length(errors) == 7
    [{:error, quota}, {:error, declared}, {:error, plain} | _] = errors

    assert %{type: "QuotaExceeded", fields: %{"retry_after" => 1.5, "limit" => 100}} =
             quota.details

    assert declared.details.fields == %{"code" => "E42", "when" => "2024-05-17"}
    assert plain.details.fields == %{}
  end

  test "list_tools: atom keys, JSON Schemas with string keys", %{pool: pool} do
    assert {:ok, tools} = Krait.list_tools(pool: pool)
    assert tools != []

    for tool <- tools do
      assert atom_keys?(tool)
      assert mixed(tool) == [], inspect(tool)
      assert tool.parameters |> Map.keys() |> Enum.all?(&is_binary/1)
    end

    # none of these tools reads an input stream (showcase's do: input_test.exs)
    assert Enum.all?(tools, &match?(%{input: nil, input_param: nil}, &1))
  end
end
