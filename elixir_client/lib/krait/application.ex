defmodule Krait.Application do
  @moduledoc false

  use Application

  # Pools normally live in the user's own supervision tree. For convenience, `config :krait, pool: [...]`
  # starts one here (named Krait.Pool unless `:name` says otherwise).
  @impl true
  def start(_type, _args) do
    pools =
      case Application.get_env(:krait, :pool) do
        nil -> []
        opts -> [{Krait.Pool, opts}]
      end

    children = [
      # the :pg scope where pools started with `cluster: true` find their peers on other nodes
      %{id: Krait.Pool.Cluster, start: {:pg, :start_link, [Krait.Pool.Cluster]}},
      # where local callers find a link worker's Port to write their frames themselves
      Krait.Link.Registry
      | pools
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Krait.Supervisor)
  end
end
