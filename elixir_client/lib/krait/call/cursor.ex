defmodule Krait.Call.Cursor do
  @moduledoc """
  One call on one worker, as a state machine every entry point drives (`Krait.execute/3` to its
  result, `Krait.execute_stream/4` chunk by chunk into a callback, `Krait.stream/3` one step per
  `Stream.resource/3` turn), the way Finch drives one response loop for all its request functions.

      {:ok, cursor} = Cursor.open(path, request, o, tool, :stream)
      case Cursor.next(cursor) do
        {:chunks, chunks, cursor} -> ...   # more may follow
        {:result, value} -> ...            # a unary call's value (or a raw call's payload): closed
        :done -> ...                       # the stream's end: closed
        {:error, %Krait.Error{}} -> ...    # closed
      end
      Cursor.cancel(cursor, :cancelled)    # a caller that stops early (halt, a failed callback)

  `open/5` checks a worker out and starts the call; `next/1` waits for the next thing the caller
  must see and handles everything else on the way:

    * acknowledging messages (the channel's flow control) and `[:krait, :call, :chunk]` events;
    * **retries**: a call that certainly never reached its worker (the worker died first: the
      channel says `unprocessed`, or its process was gone) is checked in as `:lost` and started
      again on another worker, up to three attempts within the deadline; never once a chunk was
      handed out;
    * **input** (`input:`): a `Krait.Call.Feeder` the call owns sends it within the worker's credit;
      when the Enumerable fails, the call's error is the input's (once the tool has ended);
    * **handler calls** (`handlers:`): each runs in a process of its own (`Krait.Call.Handlers`);
      those still running when the call ends are killed;
    * the **deadline**: it covers everything (waiting for a worker, the tool, the caller's own time
      between steps); past it the call is cancelled with reason `:deadline`.

  Whenever a step is final (`{:result, _}`, `:done`, `{:error, _}`), the cursor has already
  released everything: the worker is checked in (as `:lost` when it died), the feeder and the
  handler runners are stopped.
  """

  alias Krait.{Chunk, Error, Payload, Telemetry}
  alias Krait.Call.{Feeder, Handlers}
  alias Krait.Pool.{Lease, Scheduler}

  @duplex_path Krait.Proto.path(:execute_tool_duplex)
  @call_id_header "krait-call-id"
  @input_header "krait-input"
  @rpc_header "krait-rpc"
  # Attempts of a call that never reached a worker (each on a worker that was up when handed out).
  @max_attempts 3

  @typedoc "What a step hands out: `:unary` decodes the value, `:raw` the response payload, `:stream` chunks."
  @type kind :: :unary | :raw | :stream

  defstruct [
    :path,
    :request,
    :o,
    :tool,
    :kind,
    :handlers,
    :lease,
    :ref,
    :conn,
    :channel,
    :mon,
    :ctx,
    feeder: nil,
    # a monitor whose DOWN cancels the call (a call run for another node's caller, watching it)
    watch: nil,
    runners: %{},
    attempt: 1,
    delivered: false,
    last: nil,
    input_error: nil
  ]

  @opaque t :: %__MODULE__{}

  @type step ::
          {:chunks, [Chunk.t()], t()} | {:result, term()} | :done | {:error, Error.t()}

  @doc """
  Checks a worker out of `o.pool` and starts the call (`path`, `request`); retries calls that never
  reached their worker. `o` is `Krait.Call`'s options map. A unary call of a cluster pool that
  another node ran whole (`Krait.Call.Elsewhere`) answers its result at once: `{:result, value}`.
  """
  @spec open(String.t(), iodata(), map(), String.t() | atom() | nil, kind()) ::
          {:ok, t()} | {:result, term()} | {:error, Error.t()}
  def open(path, request, o, tool, kind) do
    handlers =
      if kind == :raw,
        do: %{},
        else: Map.merge(Handlers.for_pool(o.pool), Map.get(o, :handlers, %{}))

    start(%__MODULE__{
      path: path,
      request: request,
      o: o,
      tool: tool,
      kind: kind,
      handlers: handlers,
      watch: Map.get(o, :watch)
    })
  end

  defp start(%__MODULE__{o: o} = c) do
    case checkout(c) do
      # run whole on another node (Krait.Call.Elsewhere): its final step
      {:ran, step} ->
        step

      {:ok, lease} ->
        case start_stream(%{c | lease: lease}) do
          {:ok, c} -> {:ok, c}
          {:retry, error, c} -> retry(c, error)
          {:error, error, c} -> fail(c, error)
        end

      {:error, reason} ->
        {:error, Error.pool(reason, %{pool: o.pool, call_id: o.call_id})}
    end
  end

  # Never reached the worker: it is lost; again on another, within the deadline.
  defp retry(c, error) do
    c = release(c, :lost)

    if c.attempt < @max_attempts and remaining(c.o.deadline) != 0,
      do: start(%{c | attempt: c.attempt + 1, lease: nil, ref: nil, input_error: nil}),
      else: {:error, error}
  end

  defp checkout(%__MODULE__{o: o} = c) do
    start = System.monotonic_time()
    result = Scheduler.checkout(o.pool, o.session_id, o.affinity, o.deadline, placement(c))

    # a call run on another node was checked out there (that pool's checkout event)
    if not match?({:ran, _}, result),
      do: Telemetry.checkout(o.pool, o.session_id, System.monotonic_time() - start, result)

    result
  end

  # See Krait.Pool.Checkout.how/0: a call another node runs for its caller takes an idle worker or
  # none; a unary call with nothing that must stay in the caller's process (a session's binding,
  # input, handlers) may be run whole on another node.
  defp placement(%__MODULE__{o: %{idle_only: true}}), do: :idle_only

  defp placement(
         %__MODULE__{kind: :unary, o: %{session_id: nil, input: nil} = o, handlers: h} = c
       )
       when h == %{} do
    {:run_elsewhere,
     fn node, name -> Krait.Call.Elsewhere.run(node, name, c.path, c.request, o, c.tool) end}
  end

  defp placement(_c), do: :lease

  defp start_stream(%__MODULE__{lease: %Lease{conn: conn, channel: channel} = lease, o: o} = c) do
    ctx = %{
      worker_id: lease.worker_id,
      tool_name: c.tool && to_string(c.tool),
      call_id: o.call_id
    }

    c = %{c | conn: conn, channel: channel, ctx: ctx}

    case remaining(o.deadline) do
      0 ->
        {:error, timeout_error(c), c}

      remaining ->
        input = Map.get(o, :input)
        feeder = if input != nil and c.kind != :raw, do: Feeder.start(input)
        # over gRPC a call with input or handlers is an ExecuteToolDuplex call (any link call
        # carries input and handler frames)
        duplex? = (feeder != nil or c.handlers != %{}) and channel != Krait.Link
        path = if duplex?, do: @duplex_path, else: c.path
        mon = Process.monitor(conn)
        metadata = Map.put(o.trace_headers, @call_id_header, o.call_id)
        # the same header on every channel: a worker may refuse input to a tool that reads none
        metadata = if feeder, do: Map.put(metadata, @input_header, "1"), else: metadata

        # ExecuteToolDuplex serves unary and streaming tools alike: the RPC the caller expects
        # lets the worker refuse the wrong kind (WrongRpc), as the plain RPCs do
        metadata =
          if duplex?,
            do: Map.put(metadata, @rpc_header, c.path |> String.split("/") |> List.last()),
            else: metadata

        stream_opts =
          [
            owner: self(),
            metadata: metadata,
            input: feeder != nil,
            input_owner: feeder || self(),
            duplex: duplex?
          ] ++ if(remaining == :infinity, do: [], else: [timeout: remaining])

        c = %{c | mon: mon, feeder: feeder}

        try do
          channel.start_stream(conn, path, c.request, stream_opts)
        catch
          :exit, _ -> {:error, :noproc}
        end
        |> case do
          {:ok, ref} ->
            if feeder, do: Feeder.attach(feeder, channel, conn, ref)
            {:ok, %{c | ref: ref}}

          # The connection is gone: its worker is dead, and the call never reached it.
          {:error, :noproc} ->
            Process.demonitor(mon, [:flush])
            {:retry, worker_error(c), %{c | mon: nil}}

          {:error, grpc_error} ->
            Process.demonitor(mon, [:flush])
            c = %{c | mon: nil}

            case failed(grpc_error, c) do
              {:retry, error} -> {:retry, error, c}
              {:error, error} -> {:error, error, c}
            end
        end
    end
  end

  @doc """
  The call's next step: chunks (a stream), its result (a unary call), its end, or its error. Waits
  at most until the deadline; the caller's time between steps counts (chunks already received are
  not handed out past it).
  """
  @spec next(t()) :: step()
  def next(%__MODULE__{o: o} = c) do
    case remaining(o.deadline) do
      0 -> deadline(c)
      left -> await(c, left)
    end
  end

  defp await(
         %__MODULE__{ref: ref, mon: mon, feeder: feeder, runners: runners, watch: watch} = c,
         left
       ) do
    receive do
      {:krait_stream, ^ref, {:messages, payloads, bytes}} ->
        c.channel.ack(c.conn, ref, bytes)
        messages(c, payloads, bytes)

      {:krait_stream, ^ref, {:done, result}} ->
        Process.demonitor(mon, [:flush])
        done(%{c | mon: nil}, result)

      {:krait_stream, ^ref, {:handler_call, payload}} ->
        {pid, runner_mon} =
          Handlers.start(payload, c.handlers, {c.channel, c.conn, ref}, c.o.deadline)

        next(%{c | runners: Map.put(c.runners, runner_mon, pid)})

      {:DOWN, ^mon, :process, _, reason} ->
        flush(ref)
        down(%{c | mon: nil}, reason)

      {:krait_input_failed, ^feeder, error} ->
        next(%{c | input_error: error})

      # only a caller that traps exits sees these: the feeder stopping without having reported
      {:EXIT, ^feeder, reason} when reason != :normal ->
        error =
          Error.new(:input, "input failed: the input feeder exited: #{inspect(reason)}", c.ctx)

        next(%{c | input_error: c.input_error || error, feeder: nil})

      {:DOWN, runner_mon, :process, _, _} when is_map_key(runners, runner_mon) ->
        next(%{c | runners: Map.delete(runners, runner_mon)})

      # the caller this call runs for (on another node) is gone: nobody wants its result
      {:DOWN, ^watch, :process, _, _} ->
        cancel(c, :cancelled)
        {:error, Error.new(:cancelled, "the call's caller went away", c.ctx)}

      # input credit for a call without input (its input owner is the caller): nothing to send
      {:krait_stream, ^ref, {:credit, _items, _bytes}} ->
        next(c)
    after
      left -> deadline(c)
    end
  end

  defp messages(%__MODULE__{kind: :stream, o: o} = c, payloads, bytes) do
    if o.chunk_events,
      do:
        Telemetry.chunk(
          %{pool: o.pool, tool: c.ctx.tool_name, call_id: o.call_id},
          length(payloads),
          bytes
        )

    case decode_chunks(payloads, c.ctx) do
      {:ok, chunks} -> {:chunks, chunks, %{c | delivered: c.delivered or chunks != []}}
      {:error, error} -> stop(c, error)
    end
  end

  # a unary call keeps the last message: its response
  defp messages(c, payloads, _bytes), do: next(%{c | last: List.last(payloads) || c.last})

  # The caller's input failed: that is the call's error, whatever the tool made of it.
  defp done(%__MODULE__{input_error: %Error{} = error} = c, result) do
    how =
      case result do
        {:error, grpc_error} -> how(from_grpc(grpc_error, c))
        :ok -> :ok
      end

    release(c, how)
    {:error, error}
  end

  defp done(c, :ok) do
    case c.kind do
      :stream ->
        release(c, :ok)
        :done

      kind ->
        result(c, kind)
    end
  end

  defp done(c, {:error, grpc_error}) do
    case failed(grpc_error, c) do
      {:retry, error} -> retry_or_fail(c, error)
      {:error, error} -> fail(c, error)
    end
  end

  defp result(%__MODULE__{last: nil} = c, _kind),
    do: fail(c, Error.new(:protocol, "the worker sent no response message", c.ctx))

  defp result(c, :raw) do
    release(c, :ok)
    {:result, c.last}
  end

  defp result(c, :unary) do
    with {:ok, %{data: data, content_type: ct}} <-
           decode_message(Krait.Proto.ExecuteToolResponse, c.last, c.ctx),
         {:ok, value} <- payload(data, ct, c.ctx) do
      release(c, :ok)
      {:result, value}
    else
      {:error, error} -> fail(c, error)
    end
  end

  defp payload(data, ct, ctx) do
    case Payload.decode(data, ct) do
      {:ok, value} -> {:ok, value}
      {:error, message} -> {:error, Error.new(:protocol, message, ctx)}
    end
  end

  # The channel's process died without ending the call (channels end their calls before they stop,
  # marking those that never reached the worker): the call never reached the worker only when the
  # process was gone before it was opened.
  defp down(c, reason) do
    error = worker_error(c)

    cond do
      c.input_error != nil ->
        release(c, :lost)
        {:error, c.input_error}

      reason == :noproc ->
        retry_or_fail(c, error)

      true ->
        fail(c, error)
    end
  end

  # a call that has handed out chunks is never retried
  defp retry_or_fail(%__MODULE__{delivered: true} = c, error), do: fail(c, error)

  defp retry_or_fail(c, error) do
    case retry(c, error) do
      {:ok, c} -> next(c)
      {:error, _} = failure -> failure
      # the retry ran on another node (a unary call): its final step
      {:result, _} = step -> step
    end
  end

  defp failed(%{unprocessed: true} = grpc_error, c), do: {:retry, from_grpc(grpc_error, c)}
  defp failed(grpc_error, c), do: {:error, from_grpc(grpc_error, c)}

  # the worker's DEADLINE_EXCEEDED reads as the local timer's error (see Error.from_grpc/3)
  defp from_grpc(grpc_error, c), do: Error.from_grpc(grpc_error, c.ctx, c.o.timeout)

  defp deadline(c) do
    cancel(c, :deadline)
    {:error, timeout_error(c)}
  end

  # An error found on the caller's side (an undecodable message): the call is cancelled.
  defp stop(c, error) do
    cancel(c, :cancelled)
    {:error, error}
  end

  @doc """
  Stops the call early (the consumer halted, a callback failed, its deadline passed): the worker
  stops the tool (its `finally` runs), the worker is checked in, the feeder and handlers stop.
  """
  @spec cancel(t(), Krait.Channel.cancel_reason()) :: :ok
  def cancel(%__MODULE__{ref: ref, mon: mon} = c, reason \\ :cancelled) do
    if mon != nil do
      Process.demonitor(mon, [:flush])

      try do
        c.channel.cancel(c.conn, ref, reason)
      catch
        :exit, _ -> :ok
      end
    end

    flush(ref)
    release(%{c | mon: nil}, :ok)
    :ok
  end

  # A final error: everything given back (the worker as `:lost` when it died).
  defp fail(c, %Error{} = error) do
    release(c, how(error))
    {:error, error}
  end

  defp how(%Error{category: :worker}), do: :lost
  defp how(_error), do: :ok

  # Gives everything back: the feeder and handler runners stop, the worker is checked in `how`
  # (`:ok`, or `:lost` when it died).
  defp release(c, how) do
    Feeder.stop(c.feeder)

    for {mon, pid} <- c.runners do
      Process.demonitor(mon, [:flush])
      Process.exit(pid, :kill)
    end

    if c.mon, do: Process.demonitor(c.mon, [:flush])
    if c.lease, do: Scheduler.checkin(c.lease, how)
    %{c | feeder: nil, runners: %{}, mon: nil, lease: nil}
  end

  ## Decoding

  # Each message is a ToolChunkBatch, its chunks' payloads decoded together (Chunk.from_protos/1), or a
  # link's {:json_chunks, first_seq, array}.
  defp decode_chunks([payload], ctx), do: decode_batch(payload, ctx)

  defp decode_chunks(payloads, ctx) do
    Enum.reduce_while(payloads, {:ok, []}, fn payload, {:ok, acc} ->
      case decode_batch(payload, ctx) do
        {:ok, chunks} -> {:cont, {:ok, [chunks | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, acc |> Enum.reverse() |> Enum.concat()}
      error -> error
    end
  end

  # a run of plain JSON chunks from the link (a JSON_CHUNKS frame): one JSON array
  defp decode_batch({:json_chunks, first_seq, array}, ctx) do
    case Chunk.from_json_array(first_seq, array) do
      {:ok, _} = ok -> ok
      {:error, message} -> {:error, Error.new(:protocol, message, ctx)}
    end
  end

  defp decode_batch(payload, ctx) do
    with {:ok, %{chunks: protos}} <- decode_message(Krait.Proto.ToolChunkBatch, payload, ctx) do
      case Chunk.from_protos(protos) do
        {:ok, _} = ok -> ok
        {:error, message} -> {:error, Error.new(:protocol, message, ctx)}
      end
    end
  end

  @doc false
  @spec decode_message(module(), binary(), map()) :: {:ok, struct()} | {:error, Error.t()}
  def decode_message(module, payload, ctx) do
    {:ok, module.decode(payload)}
  rescue
    e ->
      {:error,
       Error.new(:protocol, "undecodable #{inspect(module)}: #{Exception.message(e)}", ctx)}
  end

  ## Helpers

  @doc "The call's context for errors: `worker_id`, `tool_name`, `call_id`."
  @spec ctx(t()) :: map()
  def ctx(%__MODULE__{ctx: ctx}), do: ctx

  @doc "The call's deadline (monotonic ms, or `:infinity`)."
  @spec deadline_of(t()) :: integer() | :infinity
  def deadline_of(%__MODULE__{o: o}), do: o.deadline

  @doc "The `:timeout` error of the call."
  @spec timeout_error(t()) :: Error.t()
  def timeout_error(%__MODULE__{o: o, ctx: ctx}) do
    Error.new(:timeout, Error.deadline_message(o.timeout), Map.put(ctx, :timeout, o.timeout))
  end

  defp worker_error(%__MODULE__{ctx: ctx}),
    do: Error.new(:worker, "worker #{ctx.worker_id} stopped during the call", ctx)

  defp flush(nil), do: :ok

  defp flush(ref) do
    receive do
      {:krait_stream, ^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  @doc "Milliseconds left before `deadline` (monotonic ms, or `:infinity`), 0 once it has passed."
  @spec remaining(integer() | :infinity) :: non_neg_integer() | :infinity
  def remaining(:infinity), do: :infinity
  def remaining(deadline), do: max(deadline - now(), 0)

  # the same clock as System.monotonic_time(:millisecond), without its unit conversion
  defp now, do: :erlang.monotonic_time(:millisecond)
end
