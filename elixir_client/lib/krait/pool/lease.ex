defmodule Krait.Pool.Lease do
  @moduledoc """
  A worker checked out of a pool for one call: what the caller needs to talk to it (`channel`, a
  `Krait.Channel` module, and `conn`, the process behind it), and the `ref` it hands back with
  `Krait.Pool.Scheduler.checkin/2` (`cells` and `cell`: see `Krait.Pool.Cells.give_back/2`).
  """

  @enforce_keys [:ref, :pool, :worker_id, :worker_pid, :conn]
  defstruct [:ref, :pool, :worker_id, :worker_pid, :conn, :cells, :cell, channel: Krait.Link]

  @type t :: %__MODULE__{
          ref: reference(),
          pool: GenServer.server(),
          worker_id: String.t(),
          worker_pid: pid(),
          conn: pid(),
          channel: module(),
          # a local lease of a pool with fast-path cells: the cells and this lease's cell
          # {index, generation, counter}, so that its holder can give the worker back at once
          cells: Krait.Pool.Cells.t() | nil,
          cell: {pos_integer(), pos_integer(), non_neg_integer()} | nil
        }
end
