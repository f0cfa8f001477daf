defmodule Krait.Call do
  @moduledoc """
  Runs one call in the caller's process: validates options, encodes the request, checks a worker out,
  talks to the worker's gRPC connection directly, decodes what comes back and, for streams, hands each
  chunk to the callback. The pool process only hands workers out and takes them back, so decoding
  and callbacks of concurrent calls run in parallel, in their callers.

  Streams use `ExecuteStreamingToolBatched`: each gRPC message carries many chunks. Each delivery from
  the connection is acknowledged as soon as it is taken from the mailbox, so the network keeps moving
  while callbacks run, and at most one flow-control window of data waits in the mailbox.

  A call that fails because its worker died is checked in as `:lost` (the worker leaves the pool at
  once). When it certainly never started on the worker (no response headers: workers answer them
  before a tool runs), it is retried on another worker within its deadline, so a worker's death fails
  only the call that was running on it.

  Every call has an id, sent to the worker in the `krait-call-id` header: the worker's log records
  for the call carry it (`call_id` Logger metadata) and so do errors (`details.call_id`).
  """

  alias Krait.{Chunk, Error, Payload, Telemetry}
  alias Krait.Pool.{Lease, Scheduler}

  @unary_path "/krait.v1.ToolWorker/ExecuteTool"
  @stream_path "/krait.v1.ToolWorker/ExecuteStreamingToolBatched"
  @cleanup_path "/krait.v1.ToolWorker/CleanupSession"
  @list_tools_path "/krait.v1.ToolWorker/ListTools"

  @call_id_header "krait-call-id"
  # Attempts of a call that never reached a worker (each on a worker that was up when handed out).
  @max_attempts 3
  # Python's worker refuses longer session ids too.
  @max_session_bytes 256

  @schema [
    pool: [
      type: :server,
      default: Krait.Pool,
      doc: "the pool to run the call on"
    ],
    timeout: [
      type: :timeout,
      default: 300_000,
      doc:
        "ms for the whole call, waiting for a worker included; the deadline travels to Python " <>
          "(`grpc-timeout`), and time spent in stream callbacks counts too"
    ],
    session_id: [
      type: {:or, [:string, :atom]},
      default: nil,
      doc:
        "keeps the call on the session's worker, where the session's state lives (at most 256 bytes)"
    ],
    affinity: [
      type: {:in, [:hint, :strict_queue, :strict_fail_fast]},
      default: :hint,
      doc: "what to do when the session's worker is busy (see Sessions)"
    ],
    metadata: [
      type: :metadata,
      default: %{},
      doc: "strings passed to the tool's context (`ctx.metadata`)"
    ],
    chunk_events: [
      type: :boolean,
      default: false,
      doc:
        "emit a `[:krait, :call, :chunk]` event for each batch of stream messages received (off by " <>
          "default: it is the hot path; see `Krait.Telemetry`)"
    ],
    trace_context: [
      type: :any,
      default: nil,
      doc:
        "W3C trace context for the call: a `traceparent` string or a map with `\"traceparent\"` " <>
          "and `\"tracestate\"` (default: the caller's OpenTelemetry context; see `Krait.Tracing`)"
    ]
  ]

  @typedoc false
  @type options :: %{
          pool: GenServer.server(),
          timeout: timeout(),
          deadline: integer() | :infinity,
          session_id: String.t() | nil,
          affinity: Scheduler.affinity(),
          metadata: %{optional(String.t()) => String.t()},
          call_id: String.t(),
          trace_headers: %{optional(String.t()) => String.t()},
          trace_context: Krait.Tracing.context(),
          chunk_events: boolean()
        }

  @doc "The call options' declaration (its table is in `Krait`'s docs)."
  @spec schema() :: Krait.Options.schema()
  def schema, do: @schema

  ## Entry points (see Krait for the documentation)

  @doc false
  @spec execute(String.t(), term(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute(tool, args, opts) do
    with {:ok, o} <- options(opts),
         {:ok, request} <- build_request(tool, args, o) do
      Telemetry.span(event_meta(o, tool, :unary), fn ->
        o
        |> with_lease(fn lease -> unary(lease, @unary_path, request, o, tool) end)
        |> explain_wrong_rpc(
          "a streaming tool: call it with Krait.execute_stream/4 or Krait.stream/3"
        )
      end)
    end
  end

  @doc false
  @spec execute_stream(String.t(), term(), (Chunk.t() -> any()), keyword()) ::
          :ok | {:error, Error.t()}
  def execute_stream(tool, args, callback, opts) when is_function(callback, 1) do
    with {:ok, o} <- options(opts),
         {:ok, request} <- build_request(tool, args, o) do
      Telemetry.span(event_meta(o, tool, :stream), fn ->
        o
        |> with_lease(fn lease ->
          with {:ok, s} <- open(lease, @stream_path, request, o, tool) do
            stream_loop(s, callback, o, false)
          end
        end)
        |> explain_wrong_rpc("not a streaming tool: call it with Krait.execute/3")
      end)
    end
  end

  def execute_stream(_tool, _args, callback, _opts),
    do:
      {:error,
       Error.new(
         :invalid_argument,
         "callback must be a 1-arity function, got: #{inspect(callback)}"
       )}

  @doc false
  @spec stream(String.t(), term(), keyword()) :: Enumerable.t()
  def stream(tool, args, opts) do
    # Options and arguments are checked now; the pool and the deadline when enumeration starts (a stream
    # may be made on one node and run on another, whose pools it then uses).
    {o, request} =
      with {:ok, o} <- validate_options(opts),
           {:ok, request} <- build_request(tool, args, o) do
        {o, request}
      else
        {:error, error} -> raise error
      end

    wrong_rpc = "not a streaming tool: call it with Krait.execute/3"

    Stream.resource(
      fn ->
        with {:error, error} <- check_pool(o.pool), do: raise(error)
        lazy_start(tool, request, o, wrong_rpc)
      end,
      &lazy_next_noting_error/1,
      &lazy_after/1
    )
  end

  @doc false
  @spec end_session(String.t(), keyword()) :: :ok | {:error, Error.t()}
  def end_session(session_id, opts) do
    with {:ok, o} <- options(opts),
         {:ok, o} <- options_for_session(o, session_id) do
      request =
        Krait.Proto.CleanupSessionRequest.encode(%Krait.Proto.CleanupSessionRequest{
          session_id: o.session_id
        })

      result =
        case with_lease(o, fn lease -> unary_raw(lease, @cleanup_path, request, o, nil) end) do
          {:ok, _} ->
            :ok

          # Its worker is gone, and the session's state with it.
          {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} ->
            :ok

          {:error, _} = error ->
            error
        end

      Scheduler.forget_session(o.pool, o.session_id)
      result
    end
  end

  @doc false
  @spec list_tools(keyword()) :: {:ok, [map()]} | {:error, Error.t()}
  def list_tools(opts) do
    with {:ok, o} <- options(opts) do
      request = Krait.Proto.ListToolsRequest.encode(%Krait.Proto.ListToolsRequest{})

      with_lease(o, fn lease ->
        ctx = %{worker_id: lease.worker_id}

        with {:ok, payload} <- unary_raw(lease, @list_tools_path, request, o, nil),
             {:ok, response} <- decode_message(Krait.Proto.ListToolsResponse, payload, ctx) do
          {:ok, Enum.map(response.tools, &tool_info/1)}
        end
      end)
    end
  end

  defp tool_info(info) do
    %{
      name: info.name,
      description: info.description,
      streaming: info.supports_streaming,
      parameters: json_schema(info.parameters_schema_json) || %{},
      result: json_schema(info.result_schema_json)
    }
  end

  defp json_schema(""), do: nil

  defp json_schema(text) do
    case Krait.JSON.decode(text) do
      {:ok, schema} -> schema
      {:error, _} -> nil
    end
  end

  ## Options and request

  @doc false
  @spec options(term()) :: {:ok, options()} | {:error, Error.t()}
  def options(opts) do
    with {:ok, o} <- validate_options(opts),
         :ok <- check_pool(o.pool) do
      {:ok, o}
    end
  end

  defp validate_options(opts) do
    case Krait.Options.validate(opts, @schema) do
      {:ok, o} ->
        session = if o.session_id in [nil, ""], do: nil, else: to_string(o.session_id)

        trace = Krait.Tracing.headers(o.trace_context, o.pool)

        cond do
          session != nil and byte_size(session) > @max_session_bytes ->
            invalid(
              "option :session_id is #{byte_size(session)} bytes; at most #{@max_session_bytes}"
            )

          match?({:error, _}, trace) ->
            invalid(elem(trace, 1))

          true ->
            {:ok,
             %{
               o
               | session_id: session,
                 metadata: Map.new(o.metadata, fn {k, v} -> {to_string(k), to_string(v)} end)
             }
             |> Map.merge(%{
               deadline: if(o.timeout == :infinity, do: :infinity, else: now() + o.timeout),
               call_id: new_call_id(),
               trace_headers: elem(trace, 1)
             })}
        end

      {:error, message} ->
        invalid(message)
    end
  end

  # `:pool` must name a running Krait pool before anything is sent to it: a call to any other process
  # would crash the caller (or that process, on an unexpected message). Every pool, local or remote,
  # owns a metrics table named after it from its start to its end: one ETS lookup, no message.
  # Checked after the options' types: a wrong type is :invalid_argument, a pid or a name that is no
  # pool's is :pool.
  defp check_pool(pool) do
    cond do
      is_atom(pool) and pool not in [nil, true, false] and
          :ets.whereis(Krait.Metrics.table(pool)) != :undefined ->
        :ok

      is_atom(pool) and pool not in [nil, true, false] ->
        {:error, Error.pool(:pool_not_running, %{pool: pool})}

      true ->
        {:error,
         %{
           Error.pool(:not_a_pool, %{pool: pool})
           | message:
               "option :pool is #{inspect(pool, limit: 5, printable_limit: 80)}, not a Krait pool:" <>
                 " name a pool by the :name it was started with"
         }}
    end
  end

  defp options_for_session(o, session_id) when is_binary(session_id) and session_id != "",
    do: {:ok, %{o | session_id: session_id, affinity: :strict_queue}}

  defp options_for_session(_o, session_id),
    do: invalid("session id must be a non-empty string, got: #{inspect(session_id)}")

  # Unique per call and short: the BEAM's unique integer, base 36, and a random part so that ids from
  # different nodes or restarts do not collide in logs.
  defp new_call_id do
    unique = System.unique_integer([:positive]) |> Integer.to_string(36)
    random = :rand.uniform(0xFFFFFF) |> Integer.to_string(16) |> String.downcase()
    String.downcase(unique) <> "-" <> random
  end

  # A tool is named by a non-empty string, or an atom as a convenience (`:add`), never by nil or a
  # boolean: those are atoms in Erlang, but a nil name is a missing value, not the tool "nil".
  defp build_request(tool, _args, _o) when tool in [nil, true, false, ""],
    do: invalid("tool name must be a non-empty string, got: #{inspect(tool)}")

  defp build_request(tool, args, o) when is_binary(tool) or is_atom(tool) do
    cond do
      is_binary(tool) and not String.valid?(tool) ->
        invalid(
          "tool name must be UTF-8 text, got: #{inspect(tool, limit: 5, printable_limit: 40)}"
        )

      key = duplicate_key(args) ->
        invalid(
          "argument #{inspect(key)} is given twice (as an atom and as a string key, or twice in a" <>
            " keyword list): keep one"
        )

      true ->
        encode_request(tool, args, o)
    end
  end

  defp build_request(tool, _args, _o),
    do: invalid("tool name must be a non-empty string, got: #{inspect(tool, limit: 5)}")

  # The name of the first argument given twice: `%{:value => 1, "value" => 2}` would silently keep one.
  defp duplicate_key(args) do
    keys =
      cond do
        is_map(args) -> Map.keys(args)
        is_list(args) and args != [] and Keyword.keyword?(args) -> Keyword.keys(args)
        true -> []
      end

    keys
    |> Enum.reduce_while(MapSet.new(), fn key, seen ->
      name = if is_atom(key), do: Atom.to_string(key), else: key

      if MapSet.member?(seen, name),
        do: {:halt, {:dup, name}},
        else: {:cont, MapSet.put(seen, name)}
    end)
    |> case do
      {:dup, name} -> name
      _ -> nil
    end
  end

  defp encode_request(tool, args, o) do
    case Payload.encode_args(args) do
      {:ok, json, binaries} ->
        request = %Krait.Proto.ExecuteToolRequest{
          tool_name: to_string(tool),
          session_id: o.session_id || "",
          args_json: IO.iodata_to_binary(json),
          metadata: o.metadata,
          binary_args:
            Map.new(binaries, fn {name, {data, ct}} ->
              {name, %Krait.Proto.Blob{data: IO.iodata_to_binary(data), content_type: ct}}
            end)
        }

        {:ok, Krait.Proto.ExecuteToolRequest.encode(request)}

      {:error, message} ->
        invalid(message)
    end
  end

  defp invalid(message), do: {:error, Error.new(:invalid_argument, message)}

  ## Leases

  # Runs `fun` on a checked-out worker. `fun` returns the call's result, or `{:retry, error}` when
  # the call never reached the worker (which died): that worker is checked in as lost and the call
  # tried again on another, within the deadline.
  defp with_lease(o, fun, attempt \\ 1) do
    case checkout(o) do
      {:ok, lease} ->
        result =
          try do
            fun.(lease)
          catch
            kind, reason ->
              Scheduler.checkin(lease)
              :erlang.raise(kind, reason, __STACKTRACE__)
          end

        case result do
          {:retry, error} ->
            Scheduler.checkin(lease, :lost)

            if attempt < @max_attempts and remaining(o.deadline) != 0,
              do: with_lease(o, fun, attempt + 1),
              else: {:error, error}

          {:error, %Error{category: :worker}} = error ->
            Scheduler.checkin(lease, :lost)
            error

          other ->
            Scheduler.checkin(lease)
            other
        end

      {:error, reason} ->
        {:error, pool_error(reason, o)}
    end
  end

  defp checkout(o) do
    start = System.monotonic_time()
    result = Scheduler.checkout(o.pool, o.session_id, o.affinity, o.deadline)
    Telemetry.checkout(o.pool, o.session_id, System.monotonic_time() - start, result)
    result
  end

  defp event_meta(o, tool, kind),
    do: %{
      pool: o.pool,
      tool: to_string(tool),
      call_id: o.call_id,
      session_id: o.session_id,
      kind: kind,
      trace_id: Krait.Tracing.trace_id(o.trace_headers)
    }

  defp chunk_event(o, ctx, payloads, bytes),
    do:
      Telemetry.chunk(
        %{pool: o.pool, tool: ctx.tool_name, call_id: o.call_id},
        length(payloads),
        bytes
      )

  defp pool_error(reason, o), do: Error.pool(reason, %{pool: o.pool, call_id: o.call_id})

  # The worker answers a call through the wrong entry point with FAILED_PRECONDITION and a
  # `WrongRpc` error; Elixir callers are told which function to use instead.
  defp explain_wrong_rpc({:error, %Error{details: %{type: "WrongRpc"} = d} = e}, what) do
    tool = Map.get(d, :tool_name)
    {:error, %{e | message: "#{tool} is #{what}"}}
  end

  defp explain_wrong_rpc(result, _what), do: result

  ## One stream on the leased worker's channel

  defp open(%Lease{conn: conn, channel: channel} = lease, path, request, o, tool) do
    ctx = %{worker_id: lease.worker_id, tool_name: tool && to_string(tool), call_id: o.call_id}

    case remaining(o.deadline) do
      0 ->
        {:error, timeout_error(o, ctx)}

      remaining ->
        mon = Process.monitor(conn)
        timeout_opt = if remaining == :infinity, do: [], else: [timeout: remaining]
        metadata = Map.put(o.trace_headers, @call_id_header, o.call_id)
        stream_opts = [owner: self(), metadata: metadata] ++ timeout_opt

        try do
          channel.start_stream(conn, path, request, stream_opts)
        catch
          :exit, _ -> {:error, :noproc}
        end
        |> case do
          {:ok, ref} ->
            {:ok, %{ref: ref, conn: conn, channel: channel, mon: mon, ctx: ctx}}

          # The connection is gone: its worker is dead, and the call never reached it.
          {:error, :noproc} ->
            Process.demonitor(mon, [:flush])
            {:retry, worker_error(ctx)}

          {:error, grpc_error} ->
            Process.demonitor(mon, [:flush])
            failed(grpc_error, ctx, o)
        end
    end
  end

  # `delivered?`: whether a chunk has reached the callback (a call that has delivered is never retried).
  defp stream_loop(%{ref: ref, conn: conn, mon: mon} = s, callback, o, delivered?) do
    receive do
      {:krait_stream, ^ref, {:messages, payloads, bytes}} ->
        s.channel.ack(conn, ref, bytes)
        if o.chunk_events, do: chunk_event(o, s.ctx, payloads, bytes)

        case deliver(payloads, callback, s.ctx, o.deadline) do
          :ok ->
            stream_loop(s, callback, o, true)

          :halt ->
            cancel(s)
            :ok

          :deadline ->
            cancel(s, :deadline)
            {:error, timeout_error(o, s.ctx)}

          {:error, _} = error ->
            cancel(s)
            error
        end

      {:krait_stream, ^ref, {:done, result}} ->
        Process.demonitor(mon, [:flush])
        done_result(result, s.ctx, delivered?, o)

      {:DOWN, ^mon, :process, _, reason} ->
        flush(ref)
        down_result(s, reason, delivered?)
    after
      remaining(o.deadline) ->
        cancel(s, :deadline)
        {:error, timeout_error(o, s.ctx)}
    end
  end

  defp done_result(:ok, _ctx, _delivered?, _o), do: :ok
  defp done_result({:error, grpc_error}, ctx, false, o), do: failed(grpc_error, ctx, o)

  defp done_result({:error, grpc_error}, ctx, true, o),
    do: {:error, from_grpc(grpc_error, ctx, o)}

  defp failed(%{unprocessed: true} = grpc_error, ctx, o),
    do: {:retry, from_grpc(grpc_error, ctx, o)}

  defp failed(grpc_error, ctx, o), do: {:error, from_grpc(grpc_error, ctx, o)}

  # the worker's DEADLINE_EXCEEDED reads as the local timer's error (see Error.from_grpc/3)
  defp from_grpc(grpc_error, ctx, o), do: Error.from_grpc(grpc_error, ctx, o.timeout)

  # The channel's process died without ending the call (channels end their calls before they stop,
  # marking those that never reached the worker): the call never reached the worker only when the
  # process was gone before it was opened.
  defp down_result(s, reason, delivered?) do
    if not delivered? and reason == :noproc,
      do: {:retry, worker_error(s.ctx)},
      else: {:error, worker_error(s.ctx)}
  end

  defp unary(lease, path, request, o, tool) do
    with {:ok, payload} <- unary_raw(lease, path, request, o, tool) do
      ctx = %{worker_id: lease.worker_id, tool_name: to_string(tool), call_id: o.call_id}

      case decode_message(Krait.Proto.ExecuteToolResponse, payload, ctx) do
        {:ok, %{data: data, content_type: ct}} ->
          case Payload.decode(data, ct) do
            {:ok, value} -> {:ok, value}
            {:error, message} -> {:error, Error.new(:protocol, message, ctx)}
          end

        error ->
          error
      end
    end
  end

  # A unary RPC, run as a stream so that it is cancelled like one: on timeout, and by the connection
  # when the caller dies.
  defp unary_raw(lease, path, request, o, tool) do
    with {:ok, s} <- open(lease, path, request, o, tool) do
      unary_loop(s, o, [])
    end
  end

  defp unary_loop(%{ref: ref, conn: conn, mon: mon} = s, o, acc) do
    receive do
      {:krait_stream, ^ref, {:messages, payloads, bytes}} ->
        s.channel.ack(conn, ref, bytes)
        unary_loop(s, o, Enum.reverse(payloads, acc))

      {:krait_stream, ^ref, {:done, :ok}} ->
        Process.demonitor(mon, [:flush])

        case acc do
          [payload | _] -> {:ok, payload}
          [] -> {:error, Error.new(:protocol, "the worker sent no response message", s.ctx)}
        end

      {:krait_stream, ^ref, {:done, {:error, grpc_error}}} ->
        Process.demonitor(mon, [:flush])
        failed(grpc_error, s.ctx, o)

      {:DOWN, ^mon, :process, _, reason} ->
        flush(ref)
        down_result(s, reason, false)
    after
      remaining(o.deadline) ->
        cancel(s, :deadline)
        {:error, timeout_error(o, s.ctx)}
    end
  end

  ## Chunks

  # Decodes each batch and runs the callback on its chunks, in order. A raising callback ends the
  # call with a :callback error (the caller cancels the stream); the pool is never involved.
  # The deadline is checked before each chunk: chunks already received must not keep a slow
  # callback running past it.
  defp deliver([], _callback, _ctx, _deadline), do: :ok

  defp deliver([payload | rest], callback, ctx, deadline) do
    with {:ok, %{chunks: chunks}} <- decode_message(Krait.Proto.ToolChunkBatch, payload, ctx),
         :ok <- run_callbacks(chunks, callback, ctx, deadline) do
      deliver(rest, callback, ctx, deadline)
    end
  end

  defp run_callbacks(chunks, callback, ctx, deadline) do
    callback_loop(chunks, callback, ctx, deadline)
  catch
    kind, reason ->
      message =
        "stream callback failed: " <> Exception.format_banner(kind, reason, __STACKTRACE__)

      details = Map.merge(ctx, %{kind: kind, reason: reason, stacktrace: __STACKTRACE__})
      {:error, Error.new(:callback, message, details)}
  end

  defp callback_loop([], _callback, _ctx, _deadline), do: :ok

  defp callback_loop([proto | rest], callback, ctx, deadline) do
    cond do
      deadline != :infinity and now() >= deadline ->
        :deadline

      true ->
        case Chunk.from_proto(proto) do
          {:ok, chunk} ->
            case callback.(chunk) do
              :halt -> :halt
              {:halt, _} -> :halt
              _ -> callback_loop(rest, callback, ctx, deadline)
            end

          {:error, message} ->
            {:error, Error.new(:protocol, message, ctx)}
        end
    end
  end

  defp decode_chunks(payloads, ctx) do
    Enum.reduce_while(payloads, {:ok, []}, fn payload, {:ok, acc} ->
      with {:ok, %{chunks: protos}} <- decode_message(Krait.Proto.ToolChunkBatch, payload, ctx),
           {:ok, chunks} <- chunks_from_protos(protos, acc, ctx) do
        {:cont, {:ok, chunks}}
      else
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp chunks_from_protos([], acc, _ctx), do: {:ok, acc}

  defp chunks_from_protos([proto | rest], acc, ctx) do
    case Chunk.from_proto(proto) do
      {:ok, chunk} -> chunks_from_protos(rest, [chunk | acc], ctx)
      {:error, message} -> {:error, Error.new(:protocol, message, ctx)}
    end
  end

  defp decode_message(module, payload, ctx) do
    {:ok, module.decode(payload)}
  rescue
    e ->
      {:error,
       Error.new(:protocol, "undecodable #{inspect(module)}: #{Exception.message(e)}", ctx)}
  end

  ## The lazy stream (Krait.stream/3)

  defp lazy_start(tool, request, o, wrong_rpc) do
    # The deadline counts from the start of enumeration.
    o = if o.timeout == :infinity, do: o, else: %{o | deadline: now() + o.timeout}
    meta = event_meta(o, tool, :stream)
    started = Telemetry.call_start(meta)

    st = %{
      tool: tool,
      request: request,
      o: o,
      wrong_rpc: wrong_rpc,
      attempt: 1,
      delivered: false,
      event: {started, meta}
    }

    try do
      lazy_open(st)
    rescue
      e in Error ->
        Telemetry.call_stop(started, meta, {:error, e})
        reraise e, __STACKTRACE__
    end
  end

  # Stream.resource/3 runs lazy_after/1 with the state from before a raise: the error is kept for it
  # in the process dictionary, under the call's id.
  defp lazy_next_noting_error(st) do
    lazy_next(st)
  rescue
    e in Error ->
      Process.put({__MODULE__, :stream_error, st.o.call_id}, e)
      reraise e, __STACKTRACE__
  end

  defp lazy_open(%{o: o} = st) do
    case checkout(o) do
      {:ok, lease} ->
        case open(lease, @stream_path, st.request, o, st.tool) do
          {:ok, s} ->
            Map.merge(st, %{s: s, lease: lease})

          {:retry, error} ->
            Scheduler.checkin(lease, :lost)
            lazy_retry(st, error)

          {:error, error} ->
            lazy_raise(st, lease, error)
        end

      {:error, reason} ->
        raise pool_error(reason, o)
    end
  end

  defp lazy_retry(st, error) do
    if st.attempt < @max_attempts and remaining(st.o.deadline) != 0,
      do: lazy_open(%{st | attempt: st.attempt + 1}),
      else: raise(error)
  end

  # Checks the lease in (as lost if the worker died) and raises; lazy_after/1 then finds it returned.
  defp lazy_raise(st, lease, %Error{} = error) do
    Scheduler.checkin(lease, if(error.category == :worker, do: :lost, else: :ok))
    {:error, error} = explain_wrong_rpc({:error, error}, st.wrong_rpc)
    raise error
  end

  defp lazy_next(%{s: :done} = st), do: {:halt, st}

  defp lazy_next(%{s: %{ref: ref, conn: conn, mon: mon} = s, o: o} = st) do
    # The consumer's time counts too: chunks already received are not handed out past the deadline.
    if remaining(o.deadline) == 0, do: raise(timeout_error(o, s.ctx))

    receive do
      {:krait_stream, ^ref, {:messages, payloads, bytes}} ->
        s.channel.ack(conn, ref, bytes)
        if o.chunk_events, do: chunk_event(o, s.ctx, payloads, bytes)

        case decode_chunks(payloads, s.ctx) do
          {:ok, chunks} -> {chunks, %{st | delivered: st.delivered or chunks != []}}
          {:error, error} -> raise error
        end

      {:krait_stream, ^ref, {:done, :ok}} ->
        Process.demonitor(mon, [:flush])
        {:halt, %{st | s: :done}}

      {:krait_stream, ^ref, {:done, {:error, grpc_error}}} ->
        Process.demonitor(mon, [:flush])
        lazy_failed(st, done_result({:error, grpc_error}, s.ctx, st.delivered, o))

      {:DOWN, ^mon, :process, _, reason} ->
        lazy_failed(st, down_result(s, reason, st.delivered))
    after
      remaining(o.deadline) -> raise timeout_error(o, s.ctx)
    end
  end

  # A failed stream: again on another worker when it never reached this one, else raised.
  defp lazy_failed(st, {:retry, error}) do
    Scheduler.checkin(st.lease, :lost)
    {[], lazy_retry(%{st | s: :done}, error)}
  end

  defp lazy_failed(st, {:error, error}), do: lazy_raise(%{st | s: :done}, st.lease, error)

  defp lazy_after(%{s: s, lease: lease, event: {started, meta}} = st) do
    if s != :done,
      do: cancel(s, if(remaining(st.o.deadline) == 0, do: :deadline, else: :cancelled))

    Scheduler.checkin(lease)

    case Process.delete({__MODULE__, :stream_error, st.o.call_id}) do
      nil -> Telemetry.call_stop(started, meta, :ok)
      error -> Telemetry.call_stop(started, meta, {:error, error})
    end
  end

  ## Helpers

  defp cancel(%{ref: ref, conn: conn, channel: channel, mon: mon}, reason \\ :cancelled) do
    Process.demonitor(mon, [:flush])

    try do
      channel.cancel(conn, ref, reason)
    catch
      :exit, _ -> :ok
    end

    flush(ref)
  end

  defp flush(ref) do
    receive do
      {:krait_stream, ^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  defp timeout_error(o, ctx) do
    Error.new(
      :timeout,
      Error.deadline_message(o.timeout),
      Map.put(ctx, :timeout, o.timeout)
    )
  end

  defp worker_error(ctx) do
    Error.new(:worker, "worker #{ctx.worker_id} stopped during the call", ctx)
  end

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - now(), 0)

  defp now, do: System.monotonic_time(:millisecond)
end
