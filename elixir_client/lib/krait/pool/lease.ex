defmodule Krait.Pool.Lease do
  @moduledoc """
  A worker checked out of a pool for one call: what the caller needs to talk to it (`channel`, a
  `Krait.Channel` module, and `conn`, the process behind it), and the `ref` it hands back with
  `Krait.Pool.Scheduler.checkin/2`.
  """

  @enforce_keys [:ref, :pool, :worker_id, :worker_pid, :conn]
  defstruct [:ref, :pool, :worker_id, :worker_pid, :conn, channel: Krait.Link]

  @type t :: %__MODULE__{
          ref: reference(),
          pool: GenServer.server(),
          worker_id: String.t(),
          worker_pid: pid(),
          conn: pid(),
          channel: module()
        }
end
