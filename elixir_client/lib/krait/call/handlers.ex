defmodule Krait.Call.Handlers do
  @moduledoc """
  Elixir functions a tool may call while it runs (`ctx.call(name, args)` in Python): the `handlers:`
  of a call and of its pool (the call's win), and the processes that run them.

  A handler call runs in a process of its own, never in the worker's process, the scheduler or the
  caller's loop: the caller starts a **runner** (monitored by the caller, which kills it when the
  call ends), and the runner runs the handler in a linked process, enforces the time limit (the
  `HandlerCall`'s `timeout_ms`, or what is left of the call's deadline) by killing it, and sends the
  one reply (`krait.v1.HandlerReply`) with the channel's `handler_reply/3`. So a reply does not wait
  for the caller (a `Krait.stream/3` consumer may be busy with chunks), and a handler that hangs,
  raises, throws or exits costs only its own process.

  Replies: `{:ok, value}` or a plain value -> the value (JSON; `%Krait.Tensor{}` as `.npy`;
  `{:binary, bytes}` as octet-stream); `{:error, reason}` -> `HandlerFailed`; a missing handler ->
  `HandlerNotFound`; raise / throw / exit -> `HandlerRaised` / `HandlerThrew` / `HandlerExited`; too
  slow -> `HandlerTimeout`. The tool's `ctx.call` raises `HandlerError` carrying the type and message.

  Pool handlers live in `:persistent_term` under the pool's name (written when the pool starts:
  one read per call, no message).
  """

  alias Krait.Proto.{HandlerCall, HandlerFailure, HandlerReply}

  @type t :: %{optional(String.t()) => (term() -> term())}

  @doc """
  Checks a `handlers:` option: a map of names (strings or atoms) to 1-arity functions. Returns them
  keyed by string, or `{:error, message}` naming what is wrong (`what` names the option).
  """
  @spec validate(term(), String.t()) :: {:ok, t()} | {:error, String.t()}
  def validate(nil, _what), do: {:ok, %{}}

  def validate(handlers, what) when is_map(handlers) and not is_struct(handlers) do
    Enum.reduce_while(handlers, {:ok, %{}}, fn
      {name, fun}, {:ok, acc}
      when is_function(fun, 1) and (is_binary(name) or is_atom(name)) and
             name not in [nil, true, false, ""] ->
        {:cont, {:ok, Map.put(acc, to_string(name), fun)}}

      {name, fun}, _ when is_function(fun, 1) ->
        {:halt,
         {:error,
          "#{what}: a handler's name must be a non-empty string or atom, got: #{inspect(name)}"}}

      {name, other}, _ ->
        {:halt,
         {:error,
          "#{what}: handler #{inspect(name)} must be a 1-arity function (fn args -> ... end), got: " <>
            inspect(other, limit: 5)}}
    end)
  end

  def validate(other, what),
    do:
      {:error,
       "#{what} must be a map of names to 1-arity functions, got: #{inspect(other, limit: 5)}"}

  @doc "Registers a pool's handlers (at its start); none erases them."
  @spec put_pool(atom(), t()) :: :ok
  def put_pool(pool, handlers) when handlers == %{} do
    _ = :persistent_term.erase(key(pool))
    :ok
  end

  def put_pool(pool, handlers), do: :persistent_term.put(key(pool), handlers)

  @doc "The handlers of `pool` (registered when it started), `%{}` for none."
  @spec for_pool(term()) :: t()
  def for_pool(pool) when is_atom(pool), do: :persistent_term.get(key(pool), %{})
  def for_pool(_pool), do: %{}

  defp key(pool), do: {__MODULE__, pool}

  @doc """
  Starts the runner for one handler call (`payload`, an encoded `HandlerCall`) and returns
  `{pid, monitor}`; the reply goes to the worker through `channel` (`{module, conn, ref}`).
  `deadline` is the call's (monotonic ms, or `:infinity`).
  """
  @spec start(binary(), t(), {module(), pid(), reference()}, integer() | :infinity) ::
          {pid(), reference()}
  def start(payload, handlers, reply_to, deadline) do
    caller = self()
    # as Task does: ownership lookups (Ecto's sandbox, Mox) in a handler find the caller
    callers = [caller | Process.get(:"$callers", [])]

    spawn_monitor(fn ->
      Process.put(:"$callers", callers)
      run(payload, handlers, reply_to, deadline, caller)
    end)
  end

  defp run(payload, handlers, {channel, conn, ref}, deadline, caller) do
    caller_mon = Process.monitor(caller)

    reply =
      case decode(payload) do
        {:ok, %HandlerCall{} = call} -> answer(call, handlers, deadline, caller_mon)
        {:error, id} -> failure(id, "HandlerFailed", "undecodable handler call")
      end

    try do
      channel.handler_reply(conn, ref, HandlerReply.encode(reply))
    catch
      :exit, _ -> :ok
    end
  end

  defp decode(payload) do
    {:ok, HandlerCall.decode(payload)}
  rescue
    _ -> {:error, 0}
  end

  defp answer(%HandlerCall{id: id, name: name} = call, handlers, deadline, caller_mon) do
    case Map.fetch(handlers, name) do
      {:ok, fun} ->
        case args(call.args_json) do
          {:ok, args} ->
            invoke(call, fun, args, deadline, caller_mon)

          :error ->
            failure(id, "HandlerFailed", "handler #{inspect(name)}: its arguments are not JSON")
        end

      :error ->
        known = handlers |> Map.keys() |> Enum.sort() |> Enum.map_join(", ", &inspect/1)

        failure(
          id,
          "HandlerNotFound",
          "no handler #{inspect(name)} (this call has #{if known == "", do: "none", else: known})"
        )
    end
  end

  defp args(""), do: {:ok, nil}

  defp args(json) do
    case Krait.JSON.decode(json) do
      {:ok, args} -> {:ok, args}
      {:error, _} -> :error
    end
  end

  # The handler runs in a linked process: killed at the time limit, or with this runner (the
  # caller kills runners still going when the call ends).
  defp invoke(%HandlerCall{id: id, name: name} = call, fun, args, deadline, caller_mon) do
    Process.flag(:trap_exit, true)
    runner = self()

    callers = [runner | Process.get(:"$callers", [])]

    pid =
      spawn_link(fn ->
        Process.put(:"$callers", callers)

        outcome =
          try do
            {:returned, fun.(args)}
          catch
            kind, reason -> {kind, reason, __STACKTRACE__}
          end

        send(runner, {self(), outcome})
      end)

    limit = limit(call.timeout_ms, deadline)

    receive do
      {^pid, {:returned, value}} ->
        value_reply(id, name, value)

      {^pid, {:error, reason, stack}} ->
        failure(id, "HandlerRaised", banner(name, :error, reason, stack))

      {^pid, {:throw, value, stack}} ->
        failure(id, "HandlerThrew", banner(name, :throw, value, stack))

      {^pid, {:exit, reason, stack}} ->
        failure(id, "HandlerExited", banner(name, :exit, reason, stack))

      {:EXIT, ^pid, reason} ->
        failure(id, "HandlerExited", banner(name, :exit, reason, []))

      {:DOWN, ^caller_mon, :process, _, _} ->
        Process.exit(pid, :kill)
        exit(:shutdown)
    after
      limit ->
        Process.exit(pid, :kill)

        failure(
          id,
          "HandlerTimeout",
          "handler #{inspect(name)} did not answer within #{limit} ms"
        )
    end
  end

  defp limit(timeout_ms, deadline) do
    left = if deadline == :infinity, do: :infinity, else: max(deadline - now(), 0)

    cond do
      timeout_ms > 0 and left == :infinity -> timeout_ms
      timeout_ms > 0 -> min(timeout_ms, left)
      true -> left
    end
  end

  defp banner(name, kind, reason, stack),
    do: "handler #{inspect(name)}: " <> Exception.format_banner(kind, reason, stack)

  defp value_reply(id, name, {:error, reason}),
    do: failure(id, "HandlerFailed", "handler #{inspect(name)}: #{reason_text(reason)}")

  defp value_reply(id, name, {:ok, value}), do: value_reply(id, name, value)

  defp value_reply(id, _name, %Krait.Tensor{} = tensor),
    do: %HandlerReply{
      id: id,
      data: IO.iodata_to_binary(Krait.Tensor.to_npy(tensor)),
      content_type: "application/x-npy"
    }

  defp value_reply(id, _name, {:binary, bytes}) when is_binary(bytes),
    do: %HandlerReply{id: id, data: bytes, content_type: "application/octet-stream"}

  defp value_reply(id, name, value) do
    case Krait.JSON.encode(value) do
      {:ok, json} ->
        %HandlerReply{id: id, data: IO.iodata_to_binary(json), content_type: "application/json"}

      {:error, _} ->
        failure(
          id,
          "HandlerFailed",
          "handler #{inspect(name)} returned a value JSON cannot hold: #{inspect(value, limit: 10)}"
        )
    end
  end

  defp reason_text(reason) when is_binary(reason), do: reason
  defp reason_text(reason), do: inspect(reason, limit: 20)

  defp failure(id, type, message),
    do: %HandlerReply{id: id, error: %HandlerFailure{type: type, message: message}}

  defp now, do: System.monotonic_time(:millisecond)
end
