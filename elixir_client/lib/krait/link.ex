defmodule Krait.Link do
  @moduledoc """
  The local link as a `Krait.Channel`: calls to one of the pool's own workers travel as frames over
  the worker's stdin/stdout (`docs/link.md`), through the `Krait.Worker` process that owns its Port.

  Starting, acknowledging and cancelling are messages to that process (no round trip); it routes each
  frame the worker sends to the call's owner by call id, and tells every open call at once when the
  worker dies.
  """

  @behaviour Krait.Channel

  @impl true
  def start_stream(worker, path, request, opts) do
    ref = make_ref()
    owner = Keyword.get(opts, :owner, self())
    method = path |> String.split("/") |> List.last()

    timeout_ms =
      case Keyword.get(opts, :timeout) do
        ms when is_integer(ms) and ms > 0 -> ms
        _ -> 0
      end

    send(
      worker,
      {:krait_open, ref, owner, method, request, timeout_ms, Keyword.get(opts, :metadata, %{})}
    )

    {:ok, ref}
  end

  @impl true
  def ack(worker, ref, bytes) do
    send(worker, {:krait_ack, ref, bytes})
    :ok
  end

  @impl true
  def cancel(worker, ref, reason \\ :cancelled) do
    send(worker, {:krait_cancel, ref, reason})
    :ok
  end
end
