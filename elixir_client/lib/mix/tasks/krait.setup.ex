defmodule Mix.Tasks.Krait.Setup do
  @shortdoc "Makes the application's Python environment for Krait's workers"
  @moduledoc """
  Makes the Python environment a pool started without `:python` runs (`Krait.Pool.Config.default_python/0`):

    1. a virtualenv in `_build/krait/venv` (`Krait.Pool.Config.venv_dir/0`): next to the per-environment
       build directories, so `dev` and `test` share it and git already ignores it;
    2. Krait's worker package, built from the Krait dependency's own source (the folder holding Krait's
       `pyproject.toml`, above this Mix project), so the Python side always matches the Elixir side;
    3. the application's own Python requirements: `requirements.txt` (`pip install -r`) or
       `pyproject.toml` (`pip install -e .`) at the project's root;
    4. a `krait_app.pth` file in the venv that puts `priv/python` on the workers' import path, so
       adapters there (`mix krait.gen.adapter`) import as `"module:Class"` from any `:cwd`.

  `uv` is used when it is on `PATH` (`uv venv`, `uv pip install`), `python -m venv` and `pip` otherwise
  (`--installer pip|uv` chooses); the first line of output says which. A venv made by uv has no
  pip: a later run with pip puts it in first (`ensurepip`). With `--offline` and uv, the packages
  must be in the venv itself (uv ignores `PYTHONPATH`), so `--installer pip` suits offline set-ups
  that rely on packages outside it.
  Idempotent: what was installed is stamped in the venv (a hash of Krait's Python source, the
  requirements files and the options); a second run with nothing changed installs nothing.

      mix krait.setup
      mix krait.setup --python python3.12     # the interpreter to make the venv from (default: python3)
      mix krait.setup --extras http,otel      # Krait's optional extras (see its README)
      mix krait.setup --force                 # install again even if nothing changed
      mix krait.setup --offline               # no package index: only what the environment already has
      mix krait.setup --system-site-packages  # the venv sees the interpreter's own packages
      mix krait.setup --krait-source PATH     # Krait's Python source elsewhere (a sparse git dependency)
      mix krait.setup --installer pip         # pip even when uv is on PATH

  Then check it with `mix krait.doctor`.
  """

  use Mix.Task

  @switches [
    python: :string,
    extras: :string,
    force: :boolean,
    offline: :boolean,
    system_site_packages: :boolean,
    krait_source: :string,
    installer: :string
  ]
  @stamp ".krait-setup"
  @min_python {3, 11}

  @impl true
  def run(args) do
    {opts, _rest} = OptionParser.parse!(args, strict: @switches)
    venv = Krait.Pool.Config.venv_dir()
    root = project_root()
    source = opts[:krait_source] || krait_source()

    unless File.regular?(Path.join(source, "pyproject.toml")) do
      Mix.raise(
        "krait.setup: no pyproject.toml in #{source}, where Krait's Python source should be. " <>
          "Give --krait-source PATH (the Krait repository's root)"
      )
    end

    requirements = requirements(root)
    stamp = stamp(source, requirements, opts)
    stamp_file = Path.join(venv, @stamp)

    if !opts[:force] and File.read(stamp_file) == {:ok, stamp} do
      Mix.shell().info("Krait's Python environment is up to date: #{venv}")
    else
      tool = installer(opts[:installer])
      make_venv(tool, venv, opts)
      python = Path.join(venv, "bin/python")
      check_version!(python)
      if tool == :pip, do: ensure_pip(python)
      staged = stage(source, Path.join(Path.dirname(venv), "src"))
      # folders are given as "." from inside them: pip reads a path holding ";" as a marker
      krait = if opts[:extras], do: ".[#{opts[:extras]}]", else: "."

      # Krait's version does not change with its source: reinstall it (pip always does for a folder)
      install(tool, python, reinstall(tool) ++ [krait], opts, staged)

      Enum.each(requirements, fn
        {:requirements, path} -> install(tool, python, ["-r", path], opts, root)
        {:pyproject, dir} -> install(tool, python, ["-e", "."], opts, dir)
      end)

      write_pth(python, Path.join(root, "priv/python"))
      File.write!(stamp_file, stamp)
      Mix.shell().info("Krait's Python environment is ready: #{python}")
    end
  end

  @doc "The root of the Krait repository this Mix project was built from (where `pyproject.toml` is)."
  @spec krait_source() :: String.t()
  def krait_source, do: Path.expand("../../../..", __DIR__)

  @doc "The current Mix project's root."
  @spec project_root() :: String.t()
  def project_root, do: Path.dirname(Mix.Project.project_file())

  defp requirements(root) do
    req = Path.join(root, "requirements.txt")
    pyproject = Path.join(root, "pyproject.toml")

    cond do
      File.regular?(req) -> [{:requirements, req}]
      File.regular?(pyproject) -> [{:pyproject, root}]
      true -> []
    end
  end

  # What decides whether the venv must be made again: Krait's Python sources, the app's
  # requirements, the options that change what is installed.
  defp stamp(source, requirements, opts) do
    files =
      Path.wildcard(Path.join(source, "{pyproject.toml,setup.py}")) ++
        Path.wildcard(Path.join(source, "{python_worker,adapters,proto}/**/*.{py,proto}")) ++
        Enum.map(requirements, fn
          {:requirements, path} -> path
          {:pyproject, dir} -> Path.join(dir, "pyproject.toml")
        end)

    hash =
      files
      |> Enum.reject(&String.contains?(&1, "/_generated/"))
      |> Enum.sort()
      |> Enum.reduce(:crypto.hash_init(:sha256), fn path, acc ->
        acc |> :crypto.hash_update(path) |> :crypto.hash_update(File.read!(path))
      end)
      |> :crypto.hash_final()
      |> Base.encode16(case: :lower)

    options = Keyword.take(opts, [:python, :extras, :system_site_packages])
    "#{hash} #{inspect(Enum.sort(options))}\n"
  end

  # pip builds a source tree in place (build/, *.egg-info): it builds a copy in _build/krait/src
  # instead, so the dependency's folder (possibly read-only, or a shared checkout) is never written.
  @not_staged ~w(.git .venv elixir_client build dist tests node_modules .bench test-artifacts)
  defp stage(source, dest) do
    File.rm_rf!(dest)
    File.mkdir_p!(dest)

    for entry <- File.ls!(source),
        entry not in @not_staged,
        not String.ends_with?(entry, ".egg-info"),
        do: File.cp_r!(Path.join(source, entry), Path.join(dest, entry))

    File.rm_rf!(Path.join(dest, "python_worker/_generated"))
    dest
  end

  # uv when it is on PATH, else pip; said before anything runs, so the output shows which one
  defp installer(choice) when choice in [nil, "uv"] do
    case System.find_executable("uv") do
      nil when choice == "uv" ->
        Mix.raise("krait.setup: --installer uv, but uv is not on PATH (see docs.astral.sh/uv)")

      nil ->
        Mix.shell().info("krait.setup: installing with pip (no uv on PATH)")
        :pip

      uv ->
        Mix.shell().info("krait.setup: installing with uv (#{uv})")
        {:uv, uv}
    end
  end

  defp installer("pip") do
    Mix.shell().info("krait.setup: installing with pip (--installer pip)")
    :pip
  end

  defp installer(other),
    do: Mix.raise("krait.setup: --installer must be uv or pip, got: #{inspect(other)}")

  defp reinstall({:uv, _}), do: ["--reinstall-package", "krait"]
  defp reinstall(:pip), do: []

  # A venv made by uv has no pip: when uv is gone since, pip is put in from the interpreter's own
  # copy (ensurepip, offline).
  defp ensure_pip(python) do
    case System.cmd(python, ["-c", "import pip"], stderr_to_stdout: true) do
      {_, 0} -> :ok
      _ -> cmd!(python, ["-m", "ensurepip", "--default-pip"])
    end
  end

  defp make_venv(tool, venv, opts) do
    if File.regular?(Path.join(venv, "bin/python")) do
      :ok
    else
      base = opts[:python] || "python3"
      File.mkdir_p!(Path.dirname(venv))
      site = if opts[:system_site_packages], do: ["--system-site-packages"], else: []

      case tool do
        {:uv, uv} -> cmd!(uv, ["venv", "--python", base] ++ site ++ [venv])
        :pip -> cmd!(find!(base), ["-m", "venv"] ++ site ++ [venv])
      end
    end
  end

  defp install({:uv, uv}, python, what, opts, dir),
    do: cmd!(uv, ["pip", "install", "--python", python] ++ offline(opts) ++ what, dir)

  defp install(:pip, python, what, opts, dir),
    do:
      cmd!(
        python,
        ["-m", "pip", "install", "--disable-pip-version-check", "--quiet"] ++
          offline(opts) ++ what,
        dir
      )

  # Offline: no index; builds use the packages already installed (setuptools, grpcio-tools).
  defp offline(opts),
    do: if(opts[:offline], do: ["--no-index", "--no-build-isolation"], else: [])

  defp check_version!(python) do
    {out, 0} = System.cmd(python, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    [major, minor] = out |> String.trim() |> String.split(".") |> Enum.map(&String.to_integer/1)

    if {major, minor} < @min_python do
      Mix.raise(
        "krait.setup: Krait's worker needs Python #{elem(@min_python, 0)}.#{elem(@min_python, 1)}+, " <>
          "#{python} is #{major}.#{minor}: remove #{Path.dirname(Path.dirname(python))} and run " <>
          "mix krait.setup --python python3.12 (or another)"
      )
    end
  end

  defp write_pth(python, dir) do
    {site, 0} =
      System.cmd(python, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])

    File.write!(Path.join(String.trim(site), "krait_app.pth"), dir <> "\n")
  end

  defp find!(name) do
    System.find_executable(name) ||
      Mix.raise("krait.setup: #{name} was not found on PATH; give --python /path/to/python3")
  end

  defp cmd!(exe, args, dir \\ File.cwd!()) do
    where = if dir == File.cwd!(), do: "", else: " (in #{dir})"
    Mix.shell().info("* #{Path.basename(exe)} #{Enum.join(args, " ")}#{where}")

    case System.cmd(exe, args,
           cd: dir,
           stderr_to_stdout: true,
           into: IO.stream(:stdio, :line)
         ) do
      {_, 0} ->
        :ok

      {_, status} ->
        Mix.raise("krait.setup: #{exe} #{hd(args)} ... failed (exit status #{status})")
    end
  end
end
