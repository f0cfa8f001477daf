defmodule Mix.Tasks.Krait.Doctor do
  @shortdoc "Checks the application's Python set-up for Krait and says how to fix each problem"
  @moduledoc """
  Checks what a pool started without `:python` needs, one line per check, each failure with what to
  do; exits non-zero when a check fails (optional extras only inform):

    * the Python: `Krait.Pool.Config.default_python/0` (`$KRAIT_PYTHON`, the venv `mix krait.setup`
      made, else `python3`), that it runs and is 3.11 or newer;
    * Krait's worker package: importable, and the same version as this Elixir side;
    * each adapter: that it imports, is a `BaseAdapter`, and its tools (listed, streaming marked);
    * Krait's optional extras (`http`, `otel`, `dataframes`, `adapters`): installed or not.

  Adapters are those given with `--adapter module:Class` (repeatable), else every `adapter:
  "module:Class"` found in the application's configuration (`config :my_app, MyApp.Pool, adapter:
  ...`, `config :krait, pool: [adapter: ...]`).

      mix krait.doctor
      mix krait.doctor --adapter shop:Shop --python .venv/bin/python
  """

  use Mix.Task

  @switches [adapter: :keep, python: :string]

  # What the adapter check runs in the worker's Python: import, class, tools (JSON on the last line).
  @adapter_check """
  import importlib, json, sys
  from python_worker import BaseAdapter
  module_name, _, class_name = sys.argv[1].partition(":")
  module = importlib.import_module(module_name)
  cls = getattr(module, class_name)
  if not (isinstance(cls, type) and issubclass(cls, BaseAdapter)):
      raise TypeError(f"{sys.argv[1]} is not a subclass of python_worker.BaseAdapter")
  print(json.dumps(sorted((n, s.supports_streaming) for n, s in cls.tool_specs().items())))
  """

  @extras [
    {"http", ["starlette", "uvicorn", "websockets"], "serve --http-port, the pool's :http_port"},
    {"otel", ["opentelemetry.sdk"], "OpenTelemetry spans for each call"},
    {"dataframes", ["pandas", "pyarrow"], "DataFrames as results"},
    {"adapters", ["scipy", "sklearn"], "the bundled ml and audio adapters"}
  ]

  @impl true
  def run(args) do
    {opts, _rest} = OptionParser.parse!(args, strict: @switches)
    Mix.Task.run("loadconfig")
    python = opts[:python] || Krait.Pool.Config.default_python()

    adapters =
      case Keyword.get_values(opts, :adapter) do
        [] -> configured_adapters()
        given -> given
      end

    results =
      case check_python(python) do
        {:ok, path} ->
          [:ok, check_krait(path)] ++
            Enum.map(adapters, &check_adapter(path, &1)) ++
            if(adapters == [], do: [no_adapters()], else: []) ++
            Enum.map(@extras, &check_extra(path, &1))

        error ->
          [error]
      end

    failures = Enum.count(results, &match?({:error, _}, &1))

    if failures > 0 do
      Mix.raise("krait.doctor: #{failures} problem(s), see above")
    else
      Mix.shell().info("krait.doctor: all good")
    end
  end

  defp check_python(python) do
    path =
      if String.contains?(python, "/"),
        do: Path.expand(python),
        else: System.find_executable(python)

    with true <- path != nil and File.regular?(path),
         {out, 0} <- cmd(path, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
         [major, minor] <- out |> String.trim() |> String.split("."),
         true <- {String.to_integer(major), String.to_integer(minor)} >= {3, 11} do
      ok("Python #{String.trim(out)}: #{path}")
      {:ok, path}
    else
      _ ->
        fail(
          "Python #{python}: missing, not runnable or older than 3.11",
          "run mix krait.setup (it makes #{Krait.Pool.Config.venv_dir()}), or set $KRAIT_PYTHON"
        )
    end
  end

  defp check_krait(python) do
    script = "import importlib.metadata as m, python_worker; print(m.version('krait'))"
    elixir_side = Application.spec(:krait, :vsn) |> to_string()

    case cmd(python, ["-c", script]) do
      {out, 0} ->
        version = out |> String.trim() |> String.split("\n") |> List.last()

        if version == elixir_side,
          do: ok("Krait's worker package #{version} (the Elixir side's version)"),
          else:
            fail(
              "Krait's worker package is #{version}, the Elixir side #{elixir_side}",
              "run mix krait.setup --force"
            )

      {out, _} ->
        fail("Krait's worker package does not import: #{last_line(out)}", "run mix krait.setup")
    end
  end

  defp check_adapter(python, adapter) do
    case cmd(python, ["-c", @adapter_check, adapter]) do
      {out, 0} ->
        tools =
          case Krait.JSON.decode(out |> String.trim() |> String.split("\n") |> List.last()) do
            {:ok, list} -> Enum.map(list, fn [n, s] -> if(s, do: "#{n} (stream)", else: n) end)
            _ -> []
          end

        if tools == [],
          do: fail("adapter #{adapter} has no tools", "mark its methods with @tool"),
          else: ok("adapter #{adapter}: #{Enum.join(tools, ", ")}")

      {out, _} ->
        fail(
          "adapter #{adapter} does not load: #{last_line(out)}",
          "an adapter is \"module:Class\" with module importable from priv/python (put there by " <>
            "mix krait.setup's krait_app.pth), the pool's :cwd, or an installed package; " <>
            "a package it imports goes in requirements.txt, then mix krait.setup"
        )
    end
  end

  defp no_adapters do
    Mix.shell().info(
      "  -  no adapter configured: give --adapter module:Class, or configure a pool's :adapter"
    )

    :ok
  end

  defp check_extra(python, {extra, modules, what}) do
    script = "import " <> Enum.join(modules, ", ")

    case cmd(python, ["-c", script]) do
      {_, 0} ->
        ok("extra #{extra} installed (#{what})")

      _ ->
        Mix.shell().info(
          "  -  extra #{extra} not installed (#{what}): mix krait.setup --extras #{extra}"
        )

        :ok
    end
  end

  @doc """
  Every `adapter: "module:Class"` in the configuration of the current application and of `:krait`.
  """
  @spec configured_adapters() :: [String.t()]
  def configured_adapters do
    apps = Enum.uniq([Mix.Project.config()[:app], :krait])

    apps
    |> Enum.flat_map(&Application.get_all_env/1)
    |> find_adapters()
    |> Enum.uniq()
  end

  defp find_adapters(list) when is_list(list) do
    Enum.flat_map(list, fn
      {:adapter, adapter} when is_binary(adapter) -> [adapter]
      {_key, value} -> find_adapters(value)
      value -> find_adapters(value)
    end)
  end

  defp find_adapters(%{} = map), do: find_adapters(Map.to_list(map))
  defp find_adapters(_), do: []

  defp cmd(exe, args) do
    System.cmd(exe, args, stderr_to_stdout: true, env: [{"PYTHONDONTWRITEBYTECODE", "1"}])
  rescue
    e -> {Exception.message(e), 1}
  end

  defp last_line(out), do: out |> String.trim() |> String.split("\n") |> List.last()

  defp ok(text) do
    Mix.shell().info("  ok " <> text)
    :ok
  end

  defp fail(text, todo) do
    Mix.shell().error("  FAIL " <> text <> "\n       -> " <> todo)
    {:error, text}
  end
end
