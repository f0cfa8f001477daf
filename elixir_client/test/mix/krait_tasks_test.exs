defmodule Mix.Tasks.KraitTasksTest do
  # A new user's path, for real: a new Mix app in a temporary folder with a path dependency on this
  # project runs `mix krait.gen.adapter`, `mix krait.setup` (twice: the second installs nothing) and
  # `mix krait.doctor`, then `mix test` on the generated test, which starts a pool without `python:`.
  #
  # Offline: the venv's third-party packages come from the repository's own .venv, made visible
  # through PYTHONPATH (a folder of links to its site-packages, Krait's own package and pip left
  # out), and `mix krait.setup --offline` builds Krait's package from this checkout without an index.
  # A second test does the same set-up with uv on PATH (uv and the packages from PyPI; tagged :uv,
  # skipped when PyPI cannot be reached).
  # Slow (a new app compiles Krait): `mix test --exclude mix_app` leaves them out.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag :mix_app
  @moduletag timeout: 600_000
  @moduletag :tmp_dir

  # every command is bounded (coreutils' timeout kills it); the app builds in its own _build, not
  # where this test run builds (MIX_BUILD_PATH would put the app's build, and its venv, there)
  defp mix!(dir, args, env, expect \\ 0) do
    env = [{"MIX_BUILD_PATH", nil}, {"MIX_DEPS_PATH", nil} | env]

    {out, status} =
      System.cmd("timeout", ["300", "mix" | args], cd: dir, env: env, stderr_to_stdout: true)

    assert status == expect, "mix #{Enum.join(args, " ")} exited #{status}:\n#{out}"
    out
  end

  # The repo venv's packages, without Krait's own (the app's venv gets Krait from this checkout).
  defp third_party_site(tmp) do
    {site, 0} =
      System.cmd(python(), ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])

    dir = Path.join(tmp, "site")
    File.mkdir_p!(dir)

    for entry <- File.ls!(String.trim(site)),
        not String.starts_with?(entry, ["krait", "__editable__", "pip", "_distutils_hack"]),
        entry not in ["distutils-precedence.pth", "__pycache__"],
        do: File.ln_s!(Path.join(String.trim(site), entry), Path.join(dir, entry))

    dir
  end

  # The interpreter the repository's venv was made from: what the app's venv is made from.
  defp base_python do
    {base, 0} = System.cmd(python(), ["-c", "import sys; print(sys._base_executable)"])
    String.trim(base)
  end

  # `mix new my_app` in `tmp` with a path dependency on this project, and its Shop adapter
  # (`mix krait.gen.adapter Shop`); returns the app's folder.
  defp new_app!(tmp, env) do
    mix!(tmp, ["new", "my_app"], env)
    app = Path.join(tmp, "my_app")
    mix_exs = Path.join(app, "mix.exs")
    dep = ~s({:krait, path: #{inspect(Path.join(root(), "elixir_client"))}})

    File.write!(
      mix_exs,
      String.replace(
        File.read!(mix_exs),
        "[\n      # {:dep_from_hexpm",
        "[\n      #{dep},\n      # {:dep_from_hexpm"
      )
    )

    assert File.read!(mix_exs) =~ dep

    out = mix!(app, ["krait.gen.adapter", "Shop"], env)
    assert out =~ "creating priv/python/shop.py"
    assert File.read!(Path.join(app, "priv/python/shop.py")) =~ "class Shop(BaseAdapter)"
    app
  end

  test "gen.adapter, setup, doctor, then the generated test passes", %{tmp_dir: tmp} do
    base_env = [{"MIX_ENV", "dev"}, {"KRAIT_PYTHON", nil}, {"PYTHONPATH", third_party_site(tmp)}]
    app = new_app!(tmp, base_env)

    # pip, even where uv is on PATH: uv ignores the PYTHONPATH this offline set-up relies on
    setup = ["krait.setup", "--offline", "--installer", "pip", "--python", base_python()]
    out = mix!(app, setup, base_env)
    assert out =~ "installing with pip"
    assert out =~ "Krait's Python environment is ready"
    assert File.regular?(Path.join(app, "_build/krait/venv/bin/python"))
    # idempotent: nothing changed, nothing installed
    out = mix!(app, setup, base_env)
    assert out =~ "up to date", out
    refute out =~ "pip install"

    out = mix!(app, ["krait.doctor", "--adapter", "shop:Shop"], base_env)
    assert out =~ "ok Krait's worker package 0.1.0"
    assert out =~ "ok adapter shop:Shop: count (stream), greet"

    # a failure says what to do, and the exit status says it failed
    out = mix!(app, ["krait.doctor", "--adapter", "nowhere:Nothing"], base_env, 1)
    assert out =~ "FAIL adapter nowhere:Nothing does not load"
    assert out =~ "->"

    out =
      mix!(
        app,
        ["test", "test/shop_adapter_test.exs"],
        List.keystore(base_env, "MIX_ENV", 0, {"MIX_ENV", "test"})
      )

    assert out =~ ~r/\b2 tests, 0 failures/
  end

  # uv, when on PATH, makes the venv and installs into it. uv comes from PyPI, into the test's
  # folder (its binary lands in DIR/bin), and Krait's dependencies from PyPI too: skipped, saying
  # so, when PyPI cannot be reached.
  @tag :uv
  @tag skip:
         (case System.cmd(
                 "python3",
                 [
                   "-c",
                   "import urllib.request as u; u.urlopen('https://pypi.org/simple/uv/', timeout=10)"
                 ],
                 stderr_to_stdout: true
               ) do
            {_, 0} ->
              false

            _ ->
              "PyPI (https://pypi.org) is unreachable: uv and Krait's dependencies come from it"
          end)
  test "setup with uv on PATH: uv makes the venv and installs Krait and the app's requirements; doctor passes",
       %{tmp_dir: tmp} do
    uv_dir = Path.join(tmp, "uv")
    # uv and its cache go when the test ends (the app stays, as in the test above, to look into)
    on_exit(fn -> Enum.each(["uv", "uv-cache"], &File.rm_rf(Path.join(tmp, &1))) end)

    {out, status} =
      System.cmd(
        "timeout",
        ["120", python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] ++
          ["--target", uv_dir, "uv"],
        stderr_to_stdout: true
      )

    assert status == 0, "pip install --target #{uv_dir} uv exited #{status}:\n#{out}"
    assert File.regular?(Path.join(uv_dir, "bin/uv"))

    env = [
      {"MIX_ENV", "dev"},
      {"KRAIT_PYTHON", nil},
      {"PYTHONPATH", nil},
      {"VIRTUAL_ENV", nil},
      {"PATH", Path.join(uv_dir, "bin") <> ":" <> System.get_env("PATH")},
      # uv's downloads and builds stay in the test's folder
      {"UV_CACHE_DIR", Path.join(tmp, "uv-cache")}
    ]

    app = new_app!(tmp, env)
    # the app's own requirement: a package neither Krait nor the interpreter has
    File.write!(Path.join(app, "requirements.txt"), "six\n")

    setup = ["krait.setup", "--python", base_python()]
    out = mix!(app, setup, env)
    assert out =~ "installing with uv (#{Path.join(uv_dir, "bin/uv")})"
    assert out =~ "* uv venv"
    assert out =~ "* uv pip install"
    refute out =~ "-m pip"
    assert out =~ "Krait's Python environment is ready"

    venv = Path.join(app, "_build/krait/venv")
    # uv marks the venvs it makes
    assert File.read!(Path.join(venv, "pyvenv.cfg")) =~ ~r/^uv = \d/m

    {imported, status} =
      System.cmd(
        Path.join(venv, "bin/python"),
        ["-c", "import six, python_worker; print(python_worker.__file__)"],
        env: [{"PYTHONPATH", nil}],
        stderr_to_stdout: true
      )

    assert status == 0, imported
    assert imported =~ venv

    # idempotent with uv too
    # (a run while Krait's Python source is being edited installs again: the stamp hashes it)
    out = mix!(app, setup, env)
    assert out =~ "up to date", out

    out = mix!(app, ["krait.doctor", "--adapter", "shop:Shop"], env)
    assert out =~ "ok Krait's worker package 0.1.0"
    assert out =~ "ok adapter shop:Shop: count (stream), greet"
  end
end
