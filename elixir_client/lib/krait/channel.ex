defmodule Krait.Channel do
  @moduledoc """
  How a call reaches a worker: the local link (`Krait.Link`, the pool's own workers, over their
  stdin/stdout) or a gRPC connection (`Krait.GRPC.Connection`). A call does the same on both: it starts
  a stream, takes messages, acknowledges them (flow control) and cancels it when its caller gives up.

  A started stream sends its owner:

    * `{:krait_stream, ref, {:messages, [payload], bytes}}` - response messages, each a binary
      (on the link a run of plain JSON chunks may come as `{:json_chunks, first_seq, json_array}`,
      see docs/link.md); `bytes` is what to `ack/3` once they are taken from the mailbox;
    * `{:krait_stream, ref, {:done, :ok | {:error, Krait.GRPC.Error.t()}}}` - the end. An error whose
      `unprocessed` is true is one the worker certainly never started;
    * `{:krait_stream, ref, {:handler_call, payload}}` - the tool asks its caller to run a handler
      (`payload` is an encoded `krait.v1.HandlerCall`); the caller answers with `handler_reply/3`.

  and its input owner (`:input_owner`, default the owner):

    * `{:krait_stream, ref, {:credit, items, bytes}}` - the worker lets the caller send `items` more
      input items and `bytes` more bytes of item data (`send_input/4`).

  Streams both ways: a call whose caller sends input is started with `input: true` (the link sends
  OPEN metadata `krait-input: "1"`); over gRPC a call with input or handlers is started on
  `ExecuteToolDuplex` with `duplex: true` (the link ignores it: every link call carries input and
  handler frames).
  """

  @typedoc "A channel: its module and the process behind it."
  @type t :: {module(), pid()}

  @doc """
  Starts `path` (a `ToolWorker` method's gRPC path) with `request`; options: `:owner`, `:timeout`,
  `:metadata`, `:input` (the caller sends input), `:input_owner` (the process given input credit) and
  `:duplex` (gRPC: `ExecuteToolDuplex`).
  """
  @callback start_stream(pid(), String.t(), iodata(), keyword()) ::
              {:ok, reference()} | {:error, term()}
  @doc "Acknowledges `bytes` of messages taken by the owner."
  @callback ack(pid(), reference(), non_neg_integer()) :: :ok

  @doc """
  Sends input items: `batch` is an encoded `krait.v1.InputBatch`, `bytes` the size of its items' data
  (what the caller counts against its byte credit). In order, without waiting; dropped once the call
  is over.
  """
  @callback send_input(pid(), reference(), iodata(), non_neg_integer()) :: :ok

  @doc """
  Ends the call's input: `:ok` when it simply ended, `{:error, message}` when the caller's input
  failed (the tool's iterator raises `InputError(message)`).
  """
  @callback end_input(pid(), reference(), :ok | {:error, String.t()}) :: :ok

  @doc "Answers a handler call: `reply` is an encoded `krait.v1.HandlerReply`."
  @callback handler_reply(pid(), reference(), iodata()) :: :ok
  @typedoc "Why a caller cancels: it went away or gave up (`:cancelled`), or its deadline passed (`:deadline`)."
  @type cancel_reason :: :cancelled | :deadline

  @doc """
  Cancels the stream (the worker stops the call); later messages for it are dropped. The reason
  reaches the worker where the channel can carry it (the link: the call ends `DEADLINE_EXCEEDED`
  in the worker's metrics and spans, not `CANCELLED`; gRPC's worker knows its deadline itself).
  """
  @callback cancel(pid(), reference(), cancel_reason()) :: :ok

  @doc """
  A whole unary call: `{:ok, response_binary}` or `{:error, reason}`; the caller waits at most
  `timeout` ms. Used for health pings, where nothing else is needed.
  """
  @spec unary(t(), String.t(), iodata(), timeout()) :: {:ok, binary()} | {:error, term()}
  def unary({module, pid}, path, request, timeout) do
    mon = Process.monitor(pid)

    try do
      with {:ok, ref} <- module.start_stream(pid, path, request, owner: self(), timeout: timeout) do
        await(module, pid, ref, mon, timeout, nil)
      end
    catch
      :exit, reason -> {:error, {:exit, reason}}
    after
      Process.demonitor(mon, [:flush])
    end
  end

  defp await(module, pid, ref, mon, timeout, acc) do
    receive do
      {:krait_stream, ^ref, {:messages, [message | _], bytes}} ->
        module.ack(pid, ref, bytes)
        await(module, pid, ref, mon, timeout, message)

      {:krait_stream, ^ref, {:done, :ok}} when acc != nil ->
        {:ok, acc}

      {:krait_stream, ^ref, {:done, :ok}} ->
        {:error, :no_response}

      {:krait_stream, ^ref, {:done, {:error, error}}} ->
        {:error, error}

      {:DOWN, ^mon, :process, _, reason} ->
        {:error, {:down, reason}}
    after
      timeout ->
        module.cancel(pid, ref)
        {:error, :timeout}
    end
  end

  @doc """
  Starts a health check of a worker without blocking its process: a unary call of `path` made from a
  process of its own, which sends `{:health, ref, result}` to the caller; a `{:health_deadline, ref}`
  message follows `timeout + 500` ms later in case it never answers. Returns `{ref, pid, timer}`.
  """
  @spec start_health_check(t(), String.t(), iodata(), timeout()) ::
          {reference(), pid(), reference()}
  def start_health_check(channel, path, request, timeout) do
    parent = self()
    ref = make_ref()
    pid = spawn(fn -> send(parent, {:health, ref, unary(channel, path, request, timeout)}) end)
    {ref, pid, Process.send_after(parent, {:health_deadline, ref}, timeout + 500)}
  end
end
