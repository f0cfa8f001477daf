defmodule Krait.ReadmeTest do
  # The README's option tables are generated from the option declarations: this keeps them in step.
  use ExUnit.Case, async: true

  test "the README's option tables match the declarations (mix krait.readme)" do
    text = File.read!(Mix.Tasks.Krait.Readme.readme())
    assert Mix.Tasks.Krait.Readme.render(text) == text, "run `mix krait.readme` in elixir_client/"
  end
end
