defmodule Krait.SDK.TypedResultsTest do
  @moduledoc """
  What the Python SDK adds reaches Elixir through the pool: an exception's public fields in
  `%Krait.Error{details}`, async tools, and result schemas in `Krait.list_tools/1`.
  """
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_module_pool!(adapter: "tests.fixtures.modern:ModernAdapter", size: 1)}
  end

  test "a custom exception's fields arrive in details", %{pool: pool} do
    assert {:error, %Krait.Error{category: :python, details: details} = error} =
             Krait.execute("quota", %{retry_after: 1.5}, pool: pool)

    assert %{type: "QuotaExceeded", tool_name: "quota", fields: fields} = details
    assert fields == %{"retry_after" => 1.5, "limit" => 100}
    assert error.message == "quota of 100 calls exceeded, retry in 1.5 s"

    # a declared details mapping, and an exception without fields
    assert {:error, %Krait.Error{details: %{fields: %{"code" => "E42", "when" => "2024-05-17"}}}} =
             Krait.execute("declared", %{}, pool: pool)

    assert {:error, %Krait.Error{details: plain}} = Krait.execute("plain_error", %{}, pool: pool)
    assert plain.fields == %{}
    assert plain |> Map.keys() |> Enum.all?(&is_atom/1)
  end

  test "async tools answer and stream through the pool", %{pool: pool} do
    assert {:ok, 3.5} = Krait.execute("add", %{a: 1, b: 2.5}, pool: pool)

    assert {:error, %Krait.Error{category: :python, details: %{fields: %{"retry_after" => 2.5}}}} =
             Krait.execute("async_fail", %{}, pool: pool)

    ticks = Krait.stream("ticks", %{count: 3}, pool: pool) |> Enum.map(& &1["tick"])
    assert ticks == [0, 1, 2, 3]
  end

  test "list_tools carries result schemas", %{pool: pool} do
    assert {:ok, tools} = Krait.list_tools(pool: pool)
    by_name = Map.new(tools, &{&1.name, &1})
    assert by_name["price"].result == %{"type" => "string"}
    assert %{"$ref" => "#/$defs/Tick"} = by_name["ticks"].result
    assert by_name["frame"].result["contentMediaType"] == "application/vnd.apache.arrow.stream"
  end
end
