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

  @doc """
  The lease `ref` of pool `pool` on worker `wid` (`w`: its `Krait.Pool.Workers` record), with its
  fast-path `cell` (nil: none; `cells` is then left out too).
  """
  @spec of(
          reference(),
          GenServer.server(),
          String.t(),
          map(),
          Krait.Pool.Cells.t() | nil,
          tuple() | nil
        ) ::
          t()
  def of(ref, pool, wid, w, cells, cell) do
    %__MODULE__{
      ref: ref,
      pool: pool,
      worker_id: wid,
      worker_pid: w.pid,
      conn: w.conn,
      channel: w.channel,
      cells: if(cell, do: cells),
      cell: cell
    }
  end
end
