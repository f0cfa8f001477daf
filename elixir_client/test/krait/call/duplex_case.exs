defmodule Krait.DuplexCase do
  @moduledoc """
  Runs a test module once per transport (`:link`, `:grpc`): `use Krait.DuplexCase, tests` defines
  one ExUnit module per transport, each with its own showcase pool (`pool` in the context, and
  `transport`). `KRAIT_DUPLEX_TRANSPORTS=link` (a comma-separated list) narrows the run.

  Loaded with `Code.require_file/2` by the streams-both-ways tests (input, handlers, pipelines).
  """

  @doc "The transports to run over."
  @spec transports() :: [:link | :grpc]
  def transports do
    (System.get_env("KRAIT_DUPLEX_TRANSPORTS") || "link,grpc")
    |> String.split(",", trim: true)
    |> Enum.map(&String.to_existing_atom(String.trim(&1)))
  end

  @doc """
  Defines `name.Link` and `name.Grpc` (as `transports/0` says), each an `ExUnit.Case` with `body`;
  `pool_opts` are the module pool's options (merged over the showcase defaults).
  """
  defmacro defduplex(name, pool_opts, do: body) do
    name = Macro.expand(name, __CALLER__)

    for transport <- transports() do
      module = Module.concat(name, transport |> Atom.to_string() |> Macro.camelize())

      quote do
        defmodule unquote(module) do
          use ExUnit.Case, async: true

          import Krait.TestHelpers

          @moduletag timeout: 180_000
          @moduletag transport: unquote(transport)
          @transport unquote(transport)

          setup_all do
            pool =
              start_module_pool!(Keyword.merge(unquote(pool_opts), transport: unquote(transport)))

            %{pool: pool, transport: unquote(transport)}
          end

          unquote(body)
        end
      end
    end
  end

  @doc "The events a showcase tool recorded under `tag`, asked through the pool (any worker)."
  @spec events(atom(), String.t()) :: map()
  def events(pool, tag) do
    # events live in one worker: ask every worker
    pool
    |> Krait.Pool.stats()
    |> Map.fetch!(:workers)
    |> Enum.reduce(%{}, fn %{id: id}, acc ->
      Map.merge(acc, Krait.TestHelpers.worker_events(pool, id, tag))
    end)
  end

  @doc "Waits until every worker of `pool` is idle, then checks a plain call works."
  @spec assert_healthy(atom()) :: :ok
  def assert_healthy(pool) do
    Krait.TestHelpers.eventually(fn ->
      stats = Krait.Pool.stats(pool)
      stats.busy == 0 and stats.idle == stats.size
    end)

    {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
    :ok
  end
end
