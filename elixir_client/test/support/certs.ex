defmodule Krait.Test.Certs do
  @moduledoc """
  Certificates for the TLS tests, made at test time by the Python suite's helper (`tests/certs.py`,
  the openssl command): a CA, a server certificate for 127.0.0.2, 127.0.0.3 and localhost, a client
  certificate, and a server certificate signed by another CA (`rogue`). One place makes them for both
  suites.
  """

  @doc "Makes the certificates in a fresh temporary directory (removed when the test module ends)."
  @spec make!() :: map()
  def make! do
    dir = Path.join(System.tmp_dir!(), "krait-certs-#{System.unique_integer([:positive])}")

    code =
      "import sys, pathlib; from tests.certs import make_certs; make_certs(pathlib.Path(sys.argv[1]))"

    {out, status} =
      System.cmd(Krait.TestHelpers.python(), ["-c", code, dir],
        cd: Krait.TestHelpers.root(),
        stderr_to_stdout: true
      )

    if status != 0, do: raise("making certificates failed: #{out}")
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf(dir) end)

    Map.new(
      ~w(ca server.crt server.key client.crt client.key rogue.crt rogue.key elsewhere.crt elsewhere.key),
      &{&1, Path.join(dir, &1 <> ".pem")}
    )
    |> Map.put("dir", dir)
  end
end
