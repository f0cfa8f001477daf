defmodule Krait.MixProject do
  use Mix.Project

  def project do
    [
      app: :krait,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: deps()
    ]
  end

  def application do
    [
      # :inets: the HTTP server of a pool's optional /metrics endpoint (Krait.Metrics.HTTP);
      # :ssl and :public_key: TLS to remote workers
      extra_applications: [:logger, :ssl, :public_key, :inets] ++ json_applications(),
      mod: {Krait.Application, []}
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # Krait.JSON prefers Elixir's own JSON module (1.18+); on older Elixir it uses jiffy when it is on the
  # code path (Debian's erlang-jiffy), which then has to be started with the application.
  defp json_applications do
    cond do
      Version.match?(System.version(), ">= 1.18.0") -> []
      :code.which(:jiffy) != :non_existing -> [:jiffy]
      true -> []
    end
  end

  # No dependencies: the gRPC channel and protobuf codec are Krait's own code. An application that has hex
  # can add {:jason, "~> 1.4"} to its own deps; Krait.JSON picks it up when neither JSON nor jiffy exists.
  defp deps do
    []
  end
end
