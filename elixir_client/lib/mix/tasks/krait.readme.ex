defmodule Mix.Tasks.Krait.Readme do
  @shortdoc "Writes the generated option tables into the repository's README"
  @moduledoc """
  Rewrites the blocks between `<!-- pool-options -->` / `<!-- /pool-options -->` and
  `<!-- call-options -->` / `<!-- /call-options -->` in `../README.md` with the tables generated
  from the option declarations (`Krait.Pool.Config.schema/0`, `Krait.Call.schema/0`).

      mix krait.readme           # rewrite
      mix krait.readme --check   # exit non-zero if the README is out of date
  """

  use Mix.Task

  @readme Path.expand("../../../../README.md", __DIR__)

  @impl true
  def run(args) do
    current = File.read!(@readme)
    wanted = render(current)

    cond do
      wanted == current -> Mix.shell().info("README option tables are up to date")
      "--check" in args -> Mix.raise("README option tables are out of date: run mix krait.readme")
      true -> File.write!(@readme, wanted)
    end
  end

  @doc "The README text with its option tables regenerated."
  @spec render(String.t()) :: String.t()
  def render(text) do
    text
    |> fill("pool-options", Krait.Options.docs(Krait.Pool.Config.schema()))
    |> fill("call-options", Krait.Options.docs(Krait.Call.schema()))
  end

  @doc "The README's path."
  @spec readme() :: String.t()
  def readme, do: @readme

  defp fill(text, tag, table) do
    open = "<!-- #{tag} -->"
    close = "<!-- /#{tag} -->"

    case String.split(text, [open, close]) do
      [before, _old, rest] -> before <> open <> "\n" <> table <> "\n" <> close <> rest
      _ -> Mix.raise("README has no #{open} ... #{close} block")
    end
  end
end
