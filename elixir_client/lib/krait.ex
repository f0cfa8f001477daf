defmodule Krait do
  @moduledoc """
  Call Python tools from Elixir. Tools run in Python worker processes (see `Krait.Pool`) and answer
  over gRPC; a streaming tool's every yielded value reaches the caller as a `Krait.Chunk`, in order, as
  soon as it exists.

      children = [{Krait.Pool, adapter: "adapters.ml:MLAdapter", size: 4, python: ".venv/bin/python"}]
      Supervisor.start_link(children, strategy: :one_for_one)

      {:ok, 5} = Krait.execute("add", %{a: 2, b: 3})

      :ok =
        Krait.execute_stream("train_model", %{epochs: 10}, fn chunk ->
          IO.puts("Epoch \#{chunk["epoch"]}")
        end)

      Krait.stream("stream_numbers", %{count: 100}) |> Enum.take(3)

  ## Options (all calls)

  Declared once in `Krait.Call`: an unknown option or a wrong type returns
  `{:error, %Krait.Error{category: :invalid_argument}}` naming it (and the nearest known option).

  #{Krait.Options.docs(Krait.Call.schema())}

  ## Sessions and affinity

  A session's calls go to the worker that served its first call, where its state lives. The
  binding is made when the first call is given a worker; calls of the session that were already
  waiting then follow it to that worker, so concurrent first calls never land on different
  workers. When the session's worker is busy, `:affinity` decides:

    * `:hint` (default) - run on any free worker (else wait for the first free one); when the
      session's worker has died, the session moves to another worker;
    * `:strict_queue` - wait for the session's worker;
    * `:strict_fail_fast` - return a `:worker_busy` error at once.

  The strict modes return `:session_worker_unavailable` when the session's worker has died.

  ## Arguments

  A map (or keyword list) of arguments. Values are sent as JSON, except top-level `%Krait.Tensor{}`
  values (sent as NumPy `.npy`) and `{:binary, bytes}` values (raw bytes).

  ## Streams both ways: input and handlers

  A tool parameter annotated `Iterator[T]` (or `AsyncIterator[T]` in an async tool) is the tool's
  input stream. Give it with `input:`, any Enumerable, on `execute/3`, `execute_stream/4` or
  `stream/3`:

      {:ok, 4950} = Krait.execute("sum_input", %{}, input: Stream.map(0..99, &%{i: &1}))

      # full duplex: items in, chunks out, as they come
      Krait.stream("echo_input", %{}, input: frames) |> Enum.each(&handle/1)

  The Enumerable is consumed lazily in a process the call owns (linked to the caller), and only as
  the tool reads: the worker grants credit (a window of items and bytes) and the caller never sends
  beyond it, so an infinite `Stream` works and a tool that returns early leaves the rest unpulled.
  Items travel as JSON (maps, lists, numbers, strings), `.npy` (`%Krait.Tensor{}`), raw bytes
  (`{:binary, bytes}`) or, for `%Krait.Chunk{}`s, as their data in its content type (progress
  events and payload-less final chunks are skipped). An item the tool's type refuses ends the call
  with `:invalid_argument` naming its index; an Enumerable that raises, throws or exits ends the
  input (the tool's iterator raises `InputError`) and the call returns `{:error, %Krait.Error{category:
  :input}}` naming the exception (`stream/3` raises it). The deadline covers the whole exchange.

  Because `stream/3` is an Enumerable, streams make pipelines, each stage on its own worker, with
  backpressure end to end; halting or killing the consumer cancels every stage:

      Krait.stream("parse", %{}, input: File.stream!("events.jsonl"))
      |> then(&Krait.stream("enrich", %{}, input: &1))
      |> then(&Krait.stream("aggregate", %{}, input: &1))
      |> Enum.to_list()

  A tool may call the caller back with `ctx.call(name, args, timeout=...)` (`await ctx.acall(...)` in
  async tools). `handlers:`, on a call or on the pool (the call's win), maps names to functions of
  one argument (the decoded JSON args) that return `{:ok, value}`, `{:error, reason}` or a plain
  value:

      Krait.execute("agent_step", %{goal: "..."},
        handlers: %{"lookup_user" => fn %{"id" => id} -> Accounts.fetch(id) end}
      )

  Each handler call runs in a process of its own (never in a worker's process or the pool's), is
  killed at its time limit (the call's `timeout`, else the call's deadline), and its failure reaches
  the tool as `HandlerError` with a type: `HandlerNotFound`, `HandlerFailed` (`{:error, reason}`),
  `HandlerRaised`, `HandlerThrew`, `HandlerExited` or `HandlerTimeout`. Handlers still running when
  the call ends are killed.

  ## Errors

  Failures are `{:error, %Krait.Error{}}`; see `Krait.Error` for the categories (and `:input`: the
  `input:` Enumerable failed; `details` has `:kind`, `:reason`, `:stacktrace` and `:index`, the items
  sent before it).
  """

  @typedoc "Call options: see the module documentation."
  @type option ::
          {:pool, GenServer.server()}
          | {:timeout, timeout()}
          | {:session_id, String.t() | nil}
          | {:affinity, :hint | :strict_queue | :strict_fail_fast}
          | {:metadata, %{optional(String.t()) => String.t()}}
          | {:chunk_events, boolean()}
          | {:trace_context, term()}
          | {:input, Enumerable.t()}
          | {:handlers, %{optional(String.t() | atom()) => (term() -> term())}}

  @typedoc "Tool arguments."
  @type args :: map() | keyword()

  @doc """
  Runs a unary tool and returns its value (decoded per its content type, see `Krait.Payload`).

      {:ok, 5} = Krait.execute("add", %{a: 2, b: 3}, pool: MyPool)

  A tool that reads an input stream takes it with `input:`; a tool that calls back, `handlers:` (see
  "Streams both ways"):

      {:ok, 6} = Krait.execute("sum_input", %{}, input: [%{i: 1}, %{i: 2}, %{i: 3}])
      {:ok, 42} = Krait.execute("ask", %{name: "answer"}, handlers: %{"answer" => fn _ -> 42 end})
  """
  @spec execute(String.t(), args(), [option()]) :: {:ok, term()} | {:error, Krait.Error.t()}
  def execute(tool, args \\ %{}, opts \\ []), do: Krait.Call.execute(tool, args, opts)

  @doc """
  Runs a streaming tool and calls `callback` with each `Krait.Chunk`: synchronously, in order, once
  per chunk, in the calling process. Returns `:ok` once the final chunk has been handled (or the
  callback halted the stream).

  The callback's return value is ignored, except `:halt` or `{:halt, term}`: the stream stops there,
  the call is cancelled on the worker (the tool's `finally` runs), the worker is freed, and
  `execute_stream/4` returns `:ok`. If the callback raises, throws or exits, the call is cancelled
  the same way and `{:error, %Krait.Error{category: :callback}}` is returned.

  With `input:`, items go in while chunks come out (full duplex):

      :ok = Krait.execute_stream("echo_input", %{}, &IO.inspect/1, input: Stream.map(1..3, &%{n: &1}))
  """
  @spec execute_stream(String.t(), args(), (Krait.Chunk.t() -> :halt | {:halt, term()} | any()), [
          option()
        ]) ::
          :ok | {:error, Krait.Error.t()}
  def execute_stream(tool, args, callback, opts \\ []),
    do: Krait.Call.execute_stream(tool, args, callback, opts)

  @doc """
  A lazy stream of a streaming tool's `Krait.Chunk`s. The call starts when enumeration starts; halting
  early (`Enum.take/2`, `Stream.take_while/2`...) cancels it on the worker. Failures raise
  `Krait.Error`. The `:timeout` covers the whole enumeration.

      Krait.stream("stream_numbers", %{count: 1_000}) |> Stream.map(& &1["number"]) |> Enum.take(5)

  As `input:` of another call it makes a pipeline (each stage on its own worker; halting the consumer
  cancels every stage):

      Krait.stream("echo_input", %{}, input: Krait.stream("stream_numbers", %{count: 10}))
      |> Enum.map(& &1.data)
  """
  @spec stream(String.t(), args(), [option()]) :: Enumerable.t()
  def stream(tool, args \\ %{}, opts \\ []), do: Krait.Call.stream(tool, args, opts)

  @doc """
  The tools of the pool's adapter, as one of its workers reports them:
  `[%{name: "add", description: "...", streaming: false, parameters: json_schema_map,
  result: json_schema_map_or_nil, input: json_schema_map_or_nil, input_param: name_or_nil}]`
  (`result` describes the value, or each chunk's data of a stream, nil when the tool does not say;
  `input` each item of the tool's input stream and `input_param` its parameter, nil when it reads none). Keys follow `Krait.Error`'s rule: Krait's own are atoms, the JSON
  Schemas keep their string keys (`tool.parameters["properties"]`).
  Accepts `:pool` and `:timeout`.
  """
  @spec list_tools([option()]) :: {:ok, [map()]} | {:error, Krait.Error.t()}
  def list_tools(opts \\ []), do: Krait.Call.list_tools(opts)

  @doc """
  Ends a session: drops its state on its worker (`CleanupSession`) and its binding in the pool.
  Accepts `:pool` and `:timeout`.
  """
  @spec end_session(String.t(), [option()]) :: :ok | {:error, Krait.Error.t()}
  def end_session(session_id, opts \\ []), do: Krait.Call.end_session(session_id, opts)
end
