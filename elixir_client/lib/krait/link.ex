defmodule Krait.Link do
  @moduledoc """
  The local link as a `Krait.Channel`: calls to one of the pool's own workers travel as frames over
  the worker's stdin/stdout (`docs/link.md`), through the `Krait.Worker` process that owns its Port.

  A caller on the worker's node writes its frames (open, acknowledgements as credit, cancel, input,
  handler replies) to the worker's Port itself, through the worker's `Krait.Link.Handle` (found in
  `Krait.Link.Registry`): no hop through the worker process on the way out. Elsewhere they are
  messages to that process (no round trip). The worker routes each frame its Python process sends to
  the call's owner by call id (input credit to the call's `:input_owner`), and tells every open call
  at once when the worker dies.

  Input and handler frames work on any call of the link: `input: true` only tells the worker that the
  caller sends input (OPEN metadata `krait-input: "1"`), so a tool that reads an input stream accepts
  the call; the `ExecuteTool` and `ExecuteStreamingToolBatched` methods serve duplex calls as well.

  A batched stream's OPEN also says `krait-json-chunks: "1"`: the worker then sends each run of plain
  JSON chunks as one `JSON_CHUNKS` frame (a JSON array), delivered to the owner as
  `{:json_chunks, first_seq, array}` in a `:messages` delivery (see `Krait.Call.Cursor`).
  """

  @behaviour Krait.Channel

  alias Krait.Link.{Handle, Registry}

  # `:duplex` is the gRPC channel's (ExecuteToolDuplex): every link call can carry input and handlers.
  # A local worker's frames are written from the caller's process (`Krait.Link.Handle`: no hop
  # through the worker); a worker on another node, or one not (or no longer) registered, is sent
  # messages and writes them itself.
  @impl true
  def start_stream(worker, path, request, opts) do
    owner = Keyword.get(opts, :owner, self())
    input_owner = Keyword.get(opts, :input_owner, owner)
    method = method(path)

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

    # the worker then sends runs of plain JSON chunks as JSON_CHUNKS frames (one JSON array each)
    metadata =
      if method == "ExecuteStreamingToolBatched",
        do: Map.put(metadata, "krait-json-chunks", "1"),
        else: metadata

    case Registry.lookup(worker) do
      nil ->
        ref = make_ref()

        send(
          worker,
          {:krait_open, ref, owner, method, request, timeout_ms, metadata, input_owner}
        )

        {:ok, ref}

      handle ->
        Handle.open(handle, owner, input_owner, method, request, timeout_ms, metadata)
    end
  end

  @tool_worker "/krait.v1.ToolWorker/"
  defp method(@tool_worker <> method), do: method
  defp method(path), do: path |> String.split("/") |> List.last()

  @impl true
  def ack(worker, ref, bytes) do
    case direct(worker, ref) do
      {handle, id} -> Handle.ack(handle, id, bytes)
      nil -> send(worker, {:krait_ack, ref, bytes})
    end

    :ok
  end

  @impl true
  def send_input(worker, ref, batch, _bytes) do
    case direct(worker, ref) do
      {handle, id} -> Handle.to_worker(handle, id, Krait.Link.Frame.input(id, batch))
      nil -> send(worker, {:krait_input, ref, batch})
    end

    :ok
  end

  @impl true
  def end_input(worker, ref, result) do
    case direct(worker, ref) do
      {handle, id} -> Handle.to_worker(handle, id, Krait.Link.Frame.input_end(id, result))
      nil -> send(worker, {:krait_input_end, ref, result})
    end

    :ok
  end

  @impl true
  def handler_reply(worker, ref, reply) do
    case direct(worker, ref) do
      {handle, id} -> Handle.to_worker(handle, id, Krait.Link.Frame.handler_reply(id, reply))
      nil -> send(worker, {:krait_handler_reply, ref, reply})
    end

    :ok
  end

  @impl true
  def cancel(worker, ref, reason \\ :cancelled) do
    case direct(worker, ref) do
      {handle, id} -> Handle.cancel(handle, id, reason)
      nil -> send(worker, {:krait_cancel, ref, reason})
    end

    :ok
  end

  # A direct call's stream ref and its worker's handle, or nil: the message path (the worker knows
  # direct calls' refs too, should its handle be gone meanwhile).
  defp direct(worker, {id, ref}) when is_integer(id) and is_reference(ref) do
    case Registry.lookup(worker) do
      nil -> nil
      handle -> {handle, id}
    end
  end

  defp direct(_worker, _ref), do: nil
end
