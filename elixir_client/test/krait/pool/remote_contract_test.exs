defmodule Krait.Pool.RemoteContractTest do
  # The whole public-API contract of KraitTest, against a pool defined only by `endpoints:`, `tls:`
  # and `token:`: two showcase workers serving TLS with a token on 127.0.0.2 and 127.0.0.3.
  use ExUnit.Case, async: true
  use Krait.Test.Contract

  alias Krait.Test.{Certs, PythonWorker}

  @moduletag timeout: 120_000

  setup_all do
    certs = Certs.make!()
    token = "contract-token-#{System.unique_integer([:positive])}"
    token_file = Path.join(certs["dir"], "token")
    File.write!(token_file, token)

    tls = [
      "--tls-cert",
      certs["server.crt"],
      "--tls-key",
      certs["server.key"],
      "--token-file",
      token_file
    ]

    workers =
      for host <- ["127.0.0.2", "127.0.0.3"],
          do: {host, PythonWorker.start(args: ["--host", host | tls])}

    on_exit(fn -> Enum.each(workers, fn {_, w} -> PythonWorker.stop(w) end) end)

    pool =
      start_module_pool!(
        endpoints: for({host, w} <- workers, do: "#{host}:#{w.tcp_port}"),
        tls: [cacertfile: certs["ca"]],
        token: token
      )

    # the Python workers name themselves (no --worker-id): worker-PID
    %{pool: pool, worker_ids: ~r/^worker-\d+$/}
  end
end
