defmodule Krait.OptionsTest do
  # The option schemas: one declaration validates, fills defaults and writes the docs table.
  use ExUnit.Case, async: true

  alias Krait.Options

  @schema [
    size: [type: :pos_integer, default: 2, doc: "workers"],
    name: [type: :atom, required: true, doc: "the name"],
    wait: [type: :timeout, doc: "how long"],
    mode: [type: {:in, [:a, :b]}, default: :a, doc: "the mode"],
    hidden: [type: :any, default: nil, doc: false]
  ]

  test "fills defaults and leaves options without one absent" do
    assert {:ok, %{size: 2, name: :x, mode: :a, hidden: nil} = o} =
             Options.validate([name: :x], @schema)

    refute Map.has_key?(o, :wait)
    assert {:ok, %{wait: :infinity}} = Options.validate([name: :x, wait: :infinity], @schema)
  end

  test "unknown options are refused, with the nearest known one" do
    assert {:error, "unknown option :sise (did you mean :size?)"} =
             Options.validate([name: :x, sise: 1], @schema)

    assert {:error, "unknown option :zzz"} = Options.validate([name: :x, zzz: 1], @schema)
  end

  test "wrong types, missing required options and non-keyword input" do
    assert {:error, "option :size must be a positive integer, got: \"10\""} =
             Options.validate([name: :x, size: "10"], @schema)

    assert {:error, "option :wait must be a positive integer (ms) or :infinity, got: \"5s\""} =
             Options.validate([name: :x, wait: "5s"], @schema)

    assert {:error, "option :mode must be one of :a, :b, got: :c"} =
             Options.validate([name: :x, mode: :c], @schema)

    assert {:error, "option :name is required: the name"} = Options.validate([], @schema)
    assert {:error, "options must be a keyword list" <> _} = Options.validate(%{}, @schema)
    assert {:error, "options must be a keyword list" <> _} = Options.validate([1, 2], @schema)
  end

  test "the docs table has a row per documented option" do
    docs = Options.docs(@schema)
    assert docs =~ "| `:size` | a positive integer | `2` | workers |"
    assert docs =~ "| `:name` | an atom | required | the name |"
    assert docs =~ "| `:mode` | one of `:a`, `:b` | `:a` | the mode |"
    refute docs =~ "hidden"
  end

  test "the pool's and the calls' docs show their generated tables" do
    {:docs_v1, _, _, _, %{"en" => pool_doc}, _, _} = Code.fetch_docs(Krait.Pool)
    assert pool_doc =~ "| `:max_queue` | a non-negative integer | `1_000` |"
    {:docs_v1, _, _, _, %{"en" => krait_doc}, _, _} = Code.fetch_docs(Krait)
    assert krait_doc =~ "| `:affinity` | one of `:hint`, `:strict_queue`, `:strict_fail_fast` |"
  end
end
