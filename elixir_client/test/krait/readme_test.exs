defmodule Krait.ReadmeTest do
  # The option tables of docs/elixir.md are generated from the option declarations: this keeps them
  # in step (`mix krait.readme` rewrites them).
  use ExUnit.Case, async: true

  test "docs/elixir.md's option tables match the declarations (mix krait.readme)" do
    text = File.read!(Mix.Tasks.Krait.Readme.doc_path())
    assert Mix.Tasks.Krait.Readme.render(text) == text, "run `mix krait.readme` in elixir_client/"
  end

  test "both tables are there, each once, and list the declared options" do
    text = File.read!(Mix.Tasks.Krait.Readme.doc_path())

    for tag <- ["pool-options", "call-options"] do
      assert length(String.split(text, "<!-- #{tag} -->")) == 2, "one <!-- #{tag} --> block"
    end

    for {name, spec} <- Krait.Call.schema() ++ Krait.Pool.Config.schema(), spec[:doc] != false do
      assert text =~ "| `#{inspect(name)}` |",
             "option #{inspect(name)} missing from docs/elixir.md"
    end
  end
end
