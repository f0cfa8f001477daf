defmodule Mix.Tasks.Krait.Gen.Adapter do
  @shortdoc "Writes a Python adapter with a unary and a streaming tool, and an ExUnit test of both"
  @moduledoc """
  Writes a new adapter and its test into the current Mix project:

      mix krait.gen.adapter Shop

    * `priv/python/shop.py`: `class Shop(BaseAdapter)` with a unary tool (`greet`) and a streaming
      one (`count`); a pool names it `adapter: "shop:Shop"` (`mix krait.setup` puts `priv/python` on
      the workers' import path);
    * `test/shop_adapter_test.exs`: starts a one-worker pool and calls both tools.

  Existing files are left alone (`--force` overwrites them). Then: `mix krait.setup`, `mix test`.
  """

  use Mix.Task

  @impl true
  def run(args) do
    {opts, names} = OptionParser.parse!(args, strict: [force: :boolean])

    name =
      case names do
        [name] -> name
        _ -> Mix.raise("usage: mix krait.gen.adapter Name (a CamelCase class name, e.g. Shop)")
      end

    unless name =~ ~r/^[A-Z][A-Za-z0-9]*$/ do
      Mix.raise("krait.gen.adapter: #{inspect(name)} is not a CamelCase class name (e.g. Shop)")
    end

    module = Macro.underscore(name)
    app = Mix.Project.config()[:app] |> to_string() |> Macro.camelize()

    write(Path.join("priv/python", module <> ".py"), python(name), opts)
    write(Path.join("test", module <> "_adapter_test.exs"), test(app, name, module), opts)
    Mix.shell().info("Next: mix krait.setup, then mix test")
  end

  defp write(path, text, opts) do
    if File.exists?(path) and !opts[:force] do
      Mix.shell().info("* exists #{path} (kept; --force overwrites)")
    else
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, text)
      Mix.shell().info("* creating #{path}")
    end
  end

  @doc false
  @spec python(String.t()) :: String.t()
  def python(name) do
    """
    \"\"\"#{name}: a Krait adapter. Each @tool method is a tool; a generator streams one chunk per yield.\"\"\"

    from __future__ import annotations

    from collections.abc import Iterator

    from python_worker import BaseAdapter, tool


    class #{name}(BaseAdapter):
        @tool(description="Greet someone")
        def greet(self, name: str) -> str:
            return f"Hello, {name}!"

        @tool(description="Count from 1 to n, one chunk each", supports_streaming=True)
        def count(self, n: int = 3) -> Iterator[dict[str, int]]:
            for i in range(1, n + 1):
                yield {"i": i}
    """
  end

  @doc false
  @spec test(String.t(), String.t(), String.t()) :: String.t()
  def test(app, name, module) do
    """
    defmodule #{app}.#{name}AdapterTest do
      # Calls the adapter in priv/python/#{module}.py through a real pool (needs mix krait.setup).
      use ExUnit.Case, async: true

      # the workers' log lines are shown only when a test fails
      @moduletag :capture_log

      setup do
        pool = :"#{name}TestPool"
        start_supervised!({Krait.Pool, name: pool, adapter: "#{module}:#{name}", size: 1})
        :ok = Krait.Pool.await_ready(pool, 30_000)
        %{pool: pool}
      end

      test "greet: a unary tool", %{pool: pool} do
        assert {:ok, "Hello, Ada!"} = Krait.execute("greet", %{name: "Ada"}, pool: pool)
      end

      test "count: a streaming tool, one chunk per yield", %{pool: pool} do
        chunks = Krait.stream("count", %{n: 3}, pool: pool) |> Enum.map(& &1.data)
        assert Enum.take(chunks, 3) == [%{"i" => 1}, %{"i" => 2}, %{"i" => 3}]
      end
    end
    """
  end
end
