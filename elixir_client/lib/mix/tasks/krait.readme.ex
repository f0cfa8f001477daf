defmodule Mix.Tasks.Krait.Readme do
  @shortdoc "Writes the generated option tables into docs/elixir.md"
  @moduledoc """
  Rewrites the blocks between `<!-- pool-options -->` / `<!-- /pool-options -->` and
  `<!-- call-options -->` / `<!-- /call-options -->` in the repository's `docs/elixir.md` (the
  Elixir client's reference, linked from the README) with the tables generated from the option
  declarations (`Krait.Pool.Config.schema/0`, `Krait.Call.schema/0`), so the documented options
  are always the declared ones. The name is historical: the tables lived in the README once.

      mix krait.readme           # rewrite
      mix krait.readme --check   # exit non-zero if the tables are out of date
  """

  use Mix.Task

  @doc_path Path.expand("../../../../docs/elixir.md", __DIR__)

  @impl true
  def run(args) do
    current = File.read!(@doc_path)
    wanted = render(current)

    cond do
      wanted == current ->
        Mix.shell().info("docs/elixir.md option tables are up to date")

      "--check" in args ->
        Mix.raise("docs/elixir.md option tables are out of date: run mix krait.readme")

      true ->
        File.write!(@doc_path, wanted)
        Mix.shell().info("* updated the option tables of #{@doc_path}")
    end
  end

  @doc "The document's text with its option tables regenerated."
  @spec render(String.t()) :: String.t()
  def render(text) do
    text
    |> fill("pool-options", Krait.Options.docs(Krait.Pool.Config.schema()))
    |> fill("call-options", Krait.Options.docs(Krait.Call.schema()))
  end

  @doc "The path of the document holding the option tables (`docs/elixir.md`)."
  @spec doc_path() :: String.t()
  def doc_path, do: @doc_path

  defp fill(text, tag, table) do
    open = "<!-- #{tag} -->"
    close = "<!-- /#{tag} -->"

    case String.split(text, [open, close]) do
      [before, _old, rest] -> before <> open <> "\n" <> table <> "\n" <> close <> rest
      _ -> Mix.raise("docs/elixir.md has no single #{open} ... #{close} block")
    end
  end
end
