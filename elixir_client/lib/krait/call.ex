defmodule Krait.Call do
  @moduledoc """
  Runs one call in the caller's process: validates options, encodes the request, checks a worker out,
  talks to the worker's gRPC connection directly, decodes what comes back and, for streams, hands each
  chunk to the callback. The pool process only hands workers out and takes them back, so decoding
  and callbacks of concurrent calls run in parallel, in their callers.

  Every entry point drives the same state machine, `Krait.Call.Cursor` (one step: chunks, a result,
  the end or an error; acknowledgements, retries, input, handler calls and the deadline are handled
  inside it): `execute/3` to its result, `execute_stream/4` step by step into the callback,
  `stream/3` one step per turn of its `Stream.resource/3`.

  Streams use `ExecuteStreamingToolBatched`: each gRPC message carries many chunks. Each delivery from
  the connection is acknowledged as soon as it is taken from the mailbox, so the network keeps moving
  while callbacks run, and at most one flow-control window of data waits in the mailbox.

  A call that fails because its worker died is checked in as `:lost` (the worker leaves the pool at
  once). When it certainly never started on the worker (no response headers: workers answer them
  before a tool runs), it is retried on another worker within its deadline, so a worker's death fails
  only the call that was running on it.

  Input (`input:`) is sent by a `Krait.Call.Feeder` the call owns, within the worker's credit; handler
  calls (`handlers:`) run in processes of their own (`Krait.Call.Handlers`).

  Every call has an id, sent to the worker in the `krait-call-id` header: the worker's log records
  for the call carry it (`call_id` Logger metadata) and so do errors (`details.call_id`).
  """

  alias Krait.{Chunk, Error, Payload, Telemetry}
  alias Krait.Call.{Cursor, Handlers}
  alias Krait.Pool.Scheduler

  @unary_path Krait.Proto.path(:execute_tool)
  @stream_path Krait.Proto.path(:execute_streaming_tool_batched)
  @cleanup_path Krait.Proto.path(:cleanup_session)
  @list_tools_path Krait.Proto.path(:list_tools)

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
    ],
    input: [
      type: :any,
      default: nil,
      doc:
        "the tool's input stream: any Enumerable (a list, a `Stream`, another `Krait.stream/3`), " <>
          "pulled lazily in a process the call owns, only as the tool reads (see Streams both ways)"
    ],
    handlers: [
      type: :any,
      default: %{},
      doc:
        "Elixir functions the tool may call (`ctx.call(name, args)`): `%{\"name\" => fun}`, each " <>
          "`fun` taking the args and returning `{:ok, value}`, `{:error, reason}` or a value; " <>
          "added to the pool's `:handlers` (this call's win)"
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
          chunk_events: boolean(),
          input: Enumerable.t() | nil,
          handlers: Handlers.t()
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
        @unary_path
        |> run_unary(request, o, tool, :unary)
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
        case Cursor.open(@stream_path, request, o, tool, :stream) do
          {:ok, cursor} -> stream_loop(cursor, callback)
          {:error, _} = error -> error
        end
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
      &lazy_next/1,
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
        case run_unary(@cleanup_path, request, o, nil, :raw) do
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

      with {:ok, payload} <- run_unary(@list_tools_path, request, o, nil, :raw),
           {:ok, response} <-
             Cursor.decode_message(Krait.Proto.ListToolsResponse, payload, %{call_id: o.call_id}) do
        {:ok, Enum.map(response.tools, &tool_info/1)}
      end
    end
  end

  defp tool_info(info) do
    %{
      name: info.name,
      description: info.description,
      streaming: info.supports_streaming,
      parameters: json_schema(info.parameters_schema_json) || %{},
      result: json_schema(info.result_schema_json),
      input: if(info.input_param != "", do: json_schema(info.input_schema_json) || %{}),
      input_param: if(info.input_param != "", do: info.input_param)
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

  # Every option's default, as `Krait.Options.validate/2` fills them in.
  @defaults Map.new(@schema, fn {key, spec} -> {key, Keyword.fetch!(spec, :default)} end)

  @doc false
  # The options most calls give (`pool:` and `timeout:`, or none) checked without walking the schema:
  # `{:ok, map}` equal to what `Krait.Options.validate/2` returns for them, or `:slow` for anything else.
  @spec fast_options(term()) :: {:ok, map()} | :slow
  def fast_options([]), do: {:ok, @defaults}

  def fast_options([{:pool, pool}]) when is_atom(pool) and pool != nil,
    do: {:ok, %{@defaults | pool: pool}}

  def fast_options([{:timeout, t}]) when t == :infinity or (is_integer(t) and t > 0),
    do: {:ok, %{@defaults | timeout: t}}

  def fast_options([{:pool, pool}, {:timeout, t}])
      when is_atom(pool) and pool != nil and (t == :infinity or (is_integer(t) and t > 0)),
      do: {:ok, %{@defaults | pool: pool, timeout: t}}

  def fast_options([{:timeout, t}, {:pool, pool}]), do: fast_options(pool: pool, timeout: t)
  def fast_options(_opts), do: :slow

  defp validate_options(opts) do
    case fast_options(opts) do
      # the defaults of the other options need none of the checks below
      {:ok, o} -> {:ok, finish_fast(o)}
      :slow -> validate_options_slow(opts)
    end
  end

  defp finish_fast(o) do
    case Krait.Tracing.headers(nil, o.pool) do
      {:ok, trace} ->
        Map.merge(o, %{
          session_id: nil,
          handlers: %{},
          deadline: if(o.timeout == :infinity, do: :infinity, else: now() + o.timeout),
          call_id: new_call_id(),
          trace_headers: trace
        })
    end
  end

  defp validate_options_slow(opts) do
    case Krait.Options.validate(opts, @schema) do
      {:ok, o} ->
        session = if o.session_id in [nil, ""], do: nil, else: to_string(o.session_id)

        trace = Krait.Tracing.headers(o.trace_context, o.pool)
        handlers = Handlers.validate(o.handlers, "option :handlers")

        cond do
          session != nil and byte_size(session) > @max_session_bytes ->
            invalid(
              "option :session_id is #{byte_size(session)} bytes; at most #{@max_session_bytes}"
            )

          match?({:error, _}, trace) ->
            invalid(elem(trace, 1))

          o.input != nil and Enumerable.impl_for(o.input) == nil ->
            invalid(
              "option :input must be an Enumerable (a list, a Stream, a Krait.stream/3...), got: " <>
                inspect(o.input, limit: 5)
            )

          match?({:error, _}, handlers) ->
            invalid(elem(handlers, 1))

          true ->
            {:ok,
             %{
               o
               | session_id: session,
                 handlers: elem(handlers, 1),
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
    lower(System.unique_integer([:positive]), 36, "") <>
      "-" <> lower(:rand.uniform(0xFFFFFF), 16, "")
  end

  # `n` in `base`, lower-case digits (Integer.to_string/2 then String.downcase/1, without the second pass)
  defp lower(n, base, acc) when n < base, do: <<digit(n), acc::binary>>
  defp lower(n, base, acc), do: lower(div(n, base), base, <<digit(rem(n, base)), acc::binary>>)

  defp digit(d) when d < 10, do: ?0 + d
  defp digit(d), do: ?a + d - 10

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

  ## Driving the cursor

  defp event_meta(o, tool, kind),
    do: %{
      pool: o.pool,
      tool: to_string(tool),
      call_id: o.call_id,
      session_id: o.session_id,
      kind: kind,
      trace_id: Krait.Tracing.trace_id(o.trace_headers)
    }

  # The worker answers a call through the wrong entry point with FAILED_PRECONDITION and a
  # `WrongRpc` error; Elixir callers are told which function to use instead.
  defp explain_wrong_rpc({:error, %Error{details: %{type: "WrongRpc"} = d} = e}, what) do
    tool = Map.get(d, :tool_name)
    message = e.message

    # a tool that reads an input stream called without `input:` is told what to pass
    if message =~ "input stream" do
      {:error, %{e | message: "#{tool} reads an input stream: pass it with the option input:"}}
    else
      {:error, %{e | message: "#{tool} is #{what}"}}
    end
  end

  defp explain_wrong_rpc(result, _what), do: result

  # A unary call (or a raw one: end_session, list_tools) to its result.
  defp run_unary(path, request, o, tool, kind) do
    case Cursor.open(path, request, o, tool, kind) do
      {:ok, cursor} ->
        case Cursor.next(cursor) do
          {:result, value} -> {:ok, value}
          {:error, _} = error -> error
        end

      # run whole on another node of a cluster pool (Krait.Call.Elsewhere)
      {:result, value} ->
        {:ok, value}

      {:error, _} = error ->
        error
    end
  end

  # execute_stream/4: each step's chunks into the callback.
  defp stream_loop(cursor, callback) do
    case Cursor.next(cursor) do
      {:chunks, chunks, cursor} ->
        case run_callbacks(chunks, callback, Cursor.ctx(cursor), Cursor.deadline_of(cursor)) do
          :ok ->
            stream_loop(cursor, callback)

          :halt ->
            Cursor.cancel(cursor)
            :ok

          :deadline ->
            Cursor.cancel(cursor, :deadline)
            {:error, Cursor.timeout_error(cursor)}

          {:error, _} = error ->
            Cursor.cancel(cursor)
            error
        end

      :done ->
        :ok

      {:error, _} = error ->
        error
    end
  end

  ## Chunks

  # Runs the callback on each chunk, in order. A raising callback ends the call with a :callback
  # error (the caller cancels the stream); the pool is never involved. The deadline is checked
  # before each chunk: chunks already received must not keep a slow callback running past it.
  defp run_callbacks(chunks, callback, ctx, deadline) do
    callback_loop(chunks, callback, deadline)
  catch
    kind, reason ->
      message =
        "stream callback failed: " <> Exception.format_banner(kind, reason, __STACKTRACE__)

      details = Map.merge(ctx, %{kind: kind, reason: reason, stacktrace: __STACKTRACE__})
      {:error, Error.new(:callback, message, details)}
  end

  defp callback_loop([], _callback, _deadline), do: :ok

  defp callback_loop([chunk | rest], callback, deadline) do
    if deadline != :infinity and now() >= deadline do
      :deadline
    else
      case callback.(chunk) do
        :halt -> :halt
        {:halt, _} -> :halt
        _ -> callback_loop(rest, callback, deadline)
      end
    end
  end

  ## The lazy stream (Krait.stream/3)

  defp lazy_start(tool, request, o, wrong_rpc) do
    # The deadline counts from the start of enumeration.
    o = if o.timeout == :infinity, do: o, else: %{o | deadline: now() + o.timeout}
    meta = event_meta(o, tool, :stream)
    started = Telemetry.call_start(meta)

    case Cursor.open(@stream_path, request, o, tool, :stream) do
      {:ok, cursor} ->
        %{cursor: cursor, o: o, wrong_rpc: wrong_rpc, event: {started, meta}}

      {:error, error} ->
        {:error, error} = explain_wrong_rpc({:error, error}, wrong_rpc)
        Telemetry.call_stop(started, meta, {:error, error})
        raise error
    end
  end

  # Stream.resource/3 runs lazy_after/1 with the state from before a raise: the error is kept for it
  # in the process dictionary, under the call's id.
  defp lazy_next(%{cursor: :done} = st), do: {:halt, st}

  defp lazy_next(%{cursor: cursor} = st) do
    case Cursor.next(cursor) do
      {:chunks, chunks, cursor} ->
        {chunks, %{st | cursor: cursor}}

      :done ->
        {:halt, %{st | cursor: :done}}

      {:error, error} ->
        {:error, error} = explain_wrong_rpc({:error, error}, st.wrong_rpc)
        Process.put({__MODULE__, :stream_error, st.o.call_id}, error)
        # the cursor is closed: lazy_after/1 (run with the state before this step) must not
        # cancel it again
        Process.put({__MODULE__, :stream_closed, st.o.call_id}, true)
        raise error
    end
  end

  defp lazy_after(%{cursor: cursor, o: o, event: {started, meta}}) do
    closed? = Process.delete({__MODULE__, :stream_closed, o.call_id}) == true

    if cursor != :done and not closed?,
      do: Cursor.cancel(cursor, if(remaining(o.deadline) == 0, do: :deadline, else: :cancelled))

    case Process.delete({__MODULE__, :stream_error, o.call_id}) do
      nil -> Telemetry.call_stop(started, meta, :ok)
      error -> Telemetry.call_stop(started, meta, {:error, error})
    end
  end

  defp remaining(deadline), do: Cursor.remaining(deadline)

  # the same clock as System.monotonic_time(:millisecond), without its unit conversion (a stream
  # reads it before each chunk)
  defp now, do: :erlang.monotonic_time(:millisecond)
end
