defmodule Krait.Test.FakeWorker do
  @moduledoc """
  A stand-in for `Krait.Worker` for scheduler tests: no Python, it reports ready at once (its own pid
  as the "connection") and stops when told. Lets the queue and affinity logic be tested
  deterministically; every test of actual calls uses real workers.
  """

  use GenServer, restart: :temporary

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @impl true
  def init(opts) do
    send(
      opts.pool,
      {:krait_worker_ready, self(), %{worker_id: opts.worker_id, conn: self(), os_pid: nil}}
    )

    {:ok, opts}
  end

  @impl true
  def handle_call(:stop, _from, state), do: {:stop, :normal, :ok, state}
end
