defmodule Mix.Tasks.KraitTasksTest do
  # A new user's path, for real: a new Mix app in a temporary folder with a path dependency on this
  # project runs `mix krait.gen.adapter`, `mix krait.setup` (twice: the second installs nothing) and
  # `mix krait.doctor`, then `mix test` on the generated test, which starts a pool without `python:`.
  #
  # Offline: the venv's third-party packages come from the repository's own .venv, made visible
  # through PYTHONPATH (a folder of links to its site-packages, Krait's own package and pip left
  # out), and `mix krait.setup --offline` builds Krait's package from this checkout without an index.
  # Slow (a new app compiles Krait): `mix test --exclude mix_app` leaves it out.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  @moduletag :mix_app
  @moduletag timeout: 600_000
  @moduletag :tmp_dir

  # every command is bounded (coreutils' timeout kills it)
  defp mix!(dir, args, env, expect \\ 0) do
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

  test "gen.adapter, setup, doctor, then the generated test passes", %{tmp_dir: tmp} do
    {base, 0} = System.cmd(python(), ["-c", "import sys; print(sys._base_executable)"])
    base_env = [{"MIX_ENV", "dev"}, {"KRAIT_PYTHON", nil}, {"PYTHONPATH", third_party_site(tmp)}]

    mix!(tmp, ["new", "my_app"], base_env)
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

    out = mix!(app, ["krait.gen.adapter", "Shop"], base_env)
    assert out =~ "creating priv/python/shop.py"
    assert File.read!(Path.join(app, "priv/python/shop.py")) =~ "class Shop(BaseAdapter)"

    setup = ["krait.setup", "--offline", "--python", String.trim(base)]
    out = mix!(app, setup, base_env)
    assert out =~ "Krait's Python environment is ready"
    assert File.regular?(Path.join(app, "_build/krait/venv/bin/python"))
    # idempotent: nothing changed, nothing installed
    out = mix!(app, setup, base_env)
    assert out =~ "up to date"
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
end
