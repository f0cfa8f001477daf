defmodule Krait.Link do
  @moduledoc """
  The local link as a `Krait.Channel`: calls to one of the pool's own workers travel as frames over
  the worker's stdin/stdout (`docs/link.md`), through the `Krait.Worker` process that owns its Port.

  Starting, acknowledging, cancelling, input and handler replies are messages to that process (no
  round trip); it routes each frame the worker sends to the call's owner by call id (input credit to
  the call's `:input_owner`), and tells every open call at once when the worker dies.

  Input and handler frames work on any call of the link: `input: true` only tells the worker that the
  caller sends input (OPEN metadata `krait-input: "1"`), so a tool that reads an input stream accepts
  the call; the `ExecuteTool` and `ExecuteStreamingToolBatched` methods serve duplex calls as well.
  """

  @behaviour Krait.Channel

  # `:duplex` is the gRPC channel's (ExecuteToolDuplex): every link call can carry input and handlers.
  @impl true
  def start_stream(worker, path, request, opts) do
    ref = make_ref()
    owner = Keyword.get(opts, :owner, self())
    input_owner = Keyword.get(opts, :input_owner, owner)
    method = path |> String.split("/") |> List.last()

    timeout_ms =
      case Keyword.get(opts, :timeout) do
        ms when is_integer(ms) and ms > 0 -> ms
        _ -> 0
      end

    metadata = Keyword.get(opts, :metadata, %{})

    metadata =
      if Keyword.get(opts, :input, false),
        do: Map.put(metadata, "krait-input", "1"),
        else: metadata

    send(worker, {:krait_open, ref, owner, method, request, timeout_ms, metadata, input_owner})
    {:ok, ref}
  end

  @impl true
  def ack(worker, ref, bytes) do
    send(worker, {:krait_ack, ref, bytes})
    :ok
  end

  @impl true
  def send_input(worker, ref, batch, _bytes) do
    send(worker, {:krait_input, ref, batch})
    :ok
  end

  @impl true
  def end_input(worker, ref, result) do
    send(worker, {:krait_input_end, ref, result})
    :ok
  end

  @impl true
  def handler_reply(worker, ref, reply) do
    send(worker, {:krait_handler_reply, ref, reply})
    :ok
  end

  @impl true
  def cancel(worker, ref, reason \\ :cancelled) do
    send(worker, {:krait_cancel, ref, reason})
    :ok
  end
end
