defmodule Krait.Error do
  @moduledoc """
  The error every Krait call returns as `{:error, %Krait.Error{}}` (and `Krait.stream/3` raises).

  `category` says what went wrong; `details` carries the specifics:

    * `:pool` - no worker could be handed out. `details.reason` is one of
      * `:worker_busy` - `affinity: :strict_fail_fast` and the session's worker (or, for a session's
        first call, every worker) is busy;
      * `:session_worker_unavailable` - a strict affinity mode and the session's worker has died;
      * `:pool_saturated` - the checkout queue is full (`:max_queue`);
      * `:queue_timeout` - the call's `:timeout` passed while it waited for a worker;
      * `:pool_not_running` - no pool is running under the `:pool` name (an atom);
      * `:not_a_pool` - `:pool` is not a pool's name at all (a pid, a tuple, a string...): pools are
        named by the atom they were started with, and nothing is sent to anything else;
      * `:workers_failing` - no worker is up and every worker's last start failed (an adapter
        that does not import, a `:python` without Krait...): returned at once instead of waiting.
        `details.last_error` holds the failed worker's last output (the import error itself),
        `details.exit` how it ended (`{:exit_status, 1}`, `:startup_timeout`...) and
        `details.worker_id` which worker it was. The pool keeps restarting workers with backoff
        and serves again once one is up. For a remote pool (`:endpoints`) no endpoint is
        reachable: `details.endpoints` lists `{endpoint, last_error_reason}` for each, and the
        message names them.
    * `:timeout` - the call's deadline passed while the tool ran (the tool is stopped too).
    * `:python` - the tool raised; `details` has `:type` (exception class), `:traceback`,
      `:tool_name`, `:worker_id` and `:fields`, the exception's public fields
      (`QuotaExceeded(retry_after=2.5)` gives `details.fields == %{"retry_after" => 2.5}`).
    * `:worker` - the worker process died or its connection broke while the call ran on it (a call
      that had not reached the worker yet is retried on another one instead).
    * `:invalid_argument` - bad arguments or options (from Elixir or from the worker): the message
      names the option or argument.
    * `:not_found` - no such tool on the worker's adapter.
    * `:failed_precondition` - the tool cannot run this way: `Krait.execute/3` of a streaming tool
      (the message says to use `Krait.execute_stream/4` or `Krait.stream/3`), a stream of a unary
      tool, a tool that broke the streaming contract.
    * `:callback` - the `execute_stream/4` callback raised, threw or exited; `details` has `:kind`,
      `:reason` and `:stacktrace`.
    * `:input` - the call's `input:` Enumerable raised, threw or exited: the call was cancelled (the
      tool's input iterator raised `InputError`); `details` has `:kind`, `:reason`, `:stacktrace` and
      `:index`, the item it failed at.
    * `:protocol` - the worker sent something Krait could not decode.
    * `:unauthenticated` - a remote worker refused the pool's token (`:token`), or it has none.
    * `:cancelled`, `:resource_exhausted`, `:grpc` - other gRPC outcomes (`details.status`).

  Errors of a call carry its id in `details.call_id`: the worker's log records for the call have
  the same `call_id` in their Logger metadata.

  ## Keys

  One rule, here and in `Krait.list_tools/1`: **Krait's own keys are atoms; what Python sent as
  JSON keeps its string keys, always in a map of its own.** A map never mixes the two, so a
  pattern reads `details: %{reason: :worker_busy}` or `details: %{fields: %{"retry_after" => s}}`,
  and no name chosen in Python becomes an atom. The maps from JSON: `details.fields` (an error the
  worker described: `%{}` when its exception has no public fields), a tool's `parameters` and
  `result` JSON Schemas.
  """

  defexception category: :grpc, message: "", details: %{}

  @type category ::
          :pool
          | :timeout
          | :python
          | :worker
          | :invalid_argument
          | :not_found
          | :failed_precondition
          | :callback
          | :input
          | :protocol
          | :unauthenticated
          | :cancelled
          | :resource_exhausted
          | :grpc

  @type t :: %__MODULE__{category: category(), message: String.t(), details: map()}

  @pool_messages %{
    worker_busy: "the session's worker is busy",
    session_worker_unavailable: "the session's worker is no longer running",
    pool_saturated: "the pool's checkout queue is full",
    queue_timeout: "timed out waiting for a free worker",
    pool_not_running: "no Krait pool is running under that name",
    not_a_pool: "option :pool does not name a Krait pool"
  }

  @doc "Builds a `:pool` error for one of the checkout failure reasons."
  @spec pool(atom() | {:workers_failing, map()}, map()) :: t()
  def pool(reason, extra \\ %{})

  def pool({:workers_failing, failure}, extra) do
    output = Map.get(failure, :output, "")

    last_line =
      output |> String.split("\n", trim: true) |> List.last() || inspect(failure[:reason])

    message =
      case failure[:endpoints] do
        nil ->
          "the pool's workers fail to start: #{last_line}"

        endpoints ->
          "no endpoint of the pool is reachable: " <>
            Enum.map_join(endpoints, "; ", fn {e, reason} -> "#{e} (#{inspect(reason)})" end) <>
            "; last: #{last_line}"
      end

    %__MODULE__{
      category: :pool,
      message: message,
      details:
        Map.merge(extra, %{
          reason: :workers_failing,
          last_error: output,
          exit: failure[:reason],
          worker_id: failure[:worker_id]
        })
        |> put_present(:endpoints, failure[:endpoints])
    }
  end

  def pool(reason, extra) do
    %__MODULE__{
      category: :pool,
      message: Map.get(@pool_messages, reason, "pool error: #{inspect(reason)}"),
      details: Map.put(extra, :reason, reason)
    }
  end

  @doc """
  What a call past its deadline says, on every Krait client (`python_worker.client.deadline_message`
  says the same): `"the call did not finish within its deadline of 1000 ms"`.
  """
  @spec deadline_message(timeout()) :: String.t()
  def deadline_message(:infinity), do: "the call did not finish within its deadline"
  def deadline_message(ms), do: "the call did not finish within its deadline of #{ms} ms"

  @doc "Builds an error of `category` with `message` and `details`."
  @spec new(category(), String.t(), map()) :: t()
  def new(category, message, details \\ %{}) do
    %__MODULE__{category: category, message: message, details: details}
  end

  @grpc_categories %{
    1 => :cancelled,
    2 => :python,
    3 => :invalid_argument,
    4 => :timeout,
    5 => :not_found,
    8 => :resource_exhausted,
    9 => :failed_precondition,
    14 => :worker,
    16 => :unauthenticated
  }

  @doc """
  Builds the error for a failed gRPC call: the category follows the status code, and the worker's
  `krait.v1.ToolError` (exception type, message, traceback), when present, fills message and details.
  `context` (`:worker_id`, `:tool_name`) is merged into `details`.

  `timeout` is the call's `:timeout`: a `DEADLINE_EXCEEDED` then says what a deadline noticed by the
  caller says (`deadline_message/1`, with `details.timeout`), whichever side noticed it first.
  """
  @spec from_grpc(Krait.GRPC.Error.t(), map(), timeout() | nil) :: t()
  def from_grpc(grpc_error, context \\ %{}, timeout \\ nil)

  def from_grpc(%{status: 4} = grpc_error, context, timeout) when timeout != nil do
    error = from_grpc(grpc_error, context, nil)

    %{
      error
      | message: deadline_message(timeout),
        details: Map.put(error.details, :timeout, timeout)
    }
  end

  def from_grpc(%{status: status, message: grpc_message, details: raw}, context, _timeout) do
    category = Map.get(@grpc_categories, status, :grpc)
    details = Map.put(context, :status, status)

    case raw && Krait.Proto.tool_error_from_status_details(raw) do
      %{} = tool_error ->
        details =
          details
          |> Map.merge(%{type: tool_error.type, traceback: tool_error.traceback})
          |> put_present(:tool_name, tool_error.tool_name)
          |> put_present(:worker_id, tool_error.worker_id)
          |> Map.put(:fields, exception_fields(tool_error.details_json))

        new(category, tool_error.message, details)

      _ ->
        new(category, grpc_message || "", details)
    end
  end

  # the exception's public fields, as JSON decodes them (string keys: names from Python, never atoms)
  defp exception_fields(""), do: %{}

  defp exception_fields(json) do
    case Krait.JSON.decode(json) do
      {:ok, %{} = fields} -> fields
      _ -> %{"krait.details_json" => json}
    end
  end

  defp put_present(map, _key, value) when value in [nil, ""], do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)

  @impl true
  def message(%__MODULE__{category: category, message: message, details: details}) do
    case details do
      %{type: type} when is_binary(type) and type != "" -> "[#{category}] #{type}: #{message}"
      _ -> "[#{category}] #{message}"
    end
  end
end
