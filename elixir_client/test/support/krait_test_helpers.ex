defmodule Krait.TestHelpers do
  @moduledoc """
  Helpers for tests that run real Python workers: pool options pointing at the repository's
  virtualenv, polling, and OS process checks.
  """

  import ExUnit.Assertions

  @root Path.expand("../../..", __DIR__)

  @doc "The repository root (where `python_worker/` and `adapters/` live)."
  @spec root() :: String.t()
  def root, do: @root

  @doc "The Python to run workers with: `KRAIT_PYTHON`, else the repository's virtualenv."
  @spec python() :: String.t()
  def python, do: System.get_env("KRAIT_PYTHON") || Path.join(@root, ".venv/bin/python")

  @doc "Options for a showcase pool, with quick restarts; `overrides` win (a remote pool with `:endpoints`)."
  @spec pool_opts(keyword()) :: keyword()
  def pool_opts(overrides \\ [])

  def pool_opts(overrides) do
    if Keyword.has_key?(overrides, :endpoints),
      do: Keyword.merge([backoff_min: 50, backoff_max: 500], overrides),
      else: local_pool_opts(overrides)
  end

  defp local_pool_opts(overrides) do
    Keyword.merge(
      [
        adapter: "adapters.showcase:ShowcaseAdapter",
        size: 2,
        python: python(),
        cwd: @root,
        backoff_min: 50,
        shutdown_grace: 1_000
      ],
      overrides
    )
  end

  @doc """
  Starts a pool under the test supervisor (stopped, with its Python processes, when the test ends)
  and waits for its workers.
  """
  @spec start_pool!(keyword()) :: atom()
  def start_pool!(overrides \\ []) do
    name =
      Keyword.get_lazy(overrides, :name, fn ->
        :"KraitTestPool#{System.unique_integer([:positive])}"
      end)

    opts = pool_opts(Keyword.put(overrides, :name, name))
    ExUnit.Callbacks.start_supervised!({Krait.Pool, opts}, id: name)
    assert :ok = Krait.Pool.await_ready(name, 20_000)
    name
  end

  @doc """
  Starts a pool shared by a whole test module (call it from `setup_all`): stopped, with its Python
  processes, when the module's tests are done. Returns its name.
  """
  @spec start_module_pool!(keyword()) :: atom()
  def start_module_pool!(overrides) do
    name = :"KraitModulePool#{System.unique_integer([:positive])}"

    {:ok, sup} =
      Supervisor.start_link([{Krait.Pool, pool_opts(Keyword.put(overrides, :name, name))}],
        strategy: :one_for_one
      )

    :ok = Krait.Pool.await_ready(name, 60_000)
    ExUnit.Callbacks.on_exit(fn -> Process.exit(sup, :shutdown) end)
    name
  end

  @doc """
  Keeps a worker of `pool` busy with a 20 s `blocking_stream` (on the session's worker when `opts`
  has `session_id:`) and returns once the stream has started; the returned function ends it.
  """
  @spec occupy(atom(), keyword()) :: (() -> :ok)
  def occupy(pool, opts \\ []) do
    test = self()
    tag = make_ref()

    task =
      Task.async(fn ->
        Krait.execute_stream(
          "blocking_stream",
          %{seconds: 20},
          fn _ -> send(test, {:occupied, tag}) end,
          [pool: pool] ++ opts
        )
      end)

    assert_receive {:occupied, ^tag}, 5_000

    fn ->
      Task.shutdown(task, :brutal_kill)
      :ok
    end
  end

  @doc """
  Holds `per_worker` calls on a one-worker pool (`calls_per_worker: per_worker`), checks that the
  worker is busy with all of them and that one more call waits, then lets one go: the waiter runs.
  """
  @spec hold_and_queue(atom(), pos_integer()) :: :ok
  def hold_and_queue(pool, per_worker) do
    test = self()

    holders =
      for _ <- 1..per_worker do
        Task.async(fn ->
          Krait.execute_stream("blocking_stream", %{seconds: 20}, fn _ -> send(test, :held) end,
            pool: pool
          )
        end)
      end

    for _ <- 1..per_worker, do: assert_receive(:held, 5_000)
    assert [%{status: :busy, in_flight: ^per_worker}] = Krait.Pool.stats(pool).workers
    assert %{queue_length: 0, busy: 1} = Krait.Pool.stats(pool)

    waiter =
      Task.async(fn -> Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 10_000) end)

    eventually(fn -> Krait.Pool.stats(pool).queue_length == 1 end)
    # one lease back: the waiter runs beside the other held call
    Task.shutdown(hd(holders), :brutal_kill)
    assert {:ok, 2.0} = Task.await(waiter, 10_000)
    Enum.each(tl(holders), &Task.shutdown(&1, :brutal_kill))
    eventually(fn -> match?([%{status: :idle, in_flight: 0}], Krait.Pool.stats(pool).workers) end)
    :ok
  end

  @doc "Every `{:chunk, chunk}` message already in the mailbox, in arrival order."
  @spec received_chunks() :: [Krait.Chunk.t()]
  def received_chunks, do: received_chunks([])

  defp received_chunks(acc) do
    receive do
      {:chunk, chunk} -> received_chunks([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  @doc "Polls `fun` every 10 ms until it returns a truthy value or `timeout` ms pass; returns the value."
  @spec eventually((() -> term()), non_neg_integer()) :: term()
  def eventually(fun, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          flunk("condition not met in time")
        else
          Process.sleep(10)
          poll(fun, deadline)
        end
    end
  end

  @doc "Whether an epmd answers on this machine."
  @spec epmd_running?() :: boolean()
  def epmd_running?, do: match?({_, 0}, System.cmd("epmd", ["-names"], stderr_to_stdout: true))

  @doc """
  Stops the epmd a test started, once the nodes it started have left it (epmd refuses `-kill` while
  names are registered, and a stopped node's registration goes a moment after it).
  """
  @spec stop_epmd(integer()) :: :ok
  def stop_epmd(deadline \\ System.monotonic_time(:millisecond) + 5_000) do
    {names, _} = System.cmd("epmd", ["-names"], stderr_to_stdout: true)

    if names =~ "name " and System.monotonic_time(:millisecond) < deadline do
      Process.sleep(20)
      stop_epmd(deadline)
    else
      # a node still registered after the wait is someone else's: epmd then refuses, and stays
      System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
      :ok
    end
  end

  @doc "Is an OS process alive (and not a zombie)?"
  @spec os_alive?(non_neg_integer()) :: boolean()
  def os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not (stat |> String.split(") ") |> List.last() |> String.starts_with?("Z"))
      {:error, _} -> false
    end
  end

  @doc "Sends a signal to an OS process."
  @spec os_kill(non_neg_integer(), String.t()) :: :ok
  def os_kill(os_pid, signal \\ "KILL") do
    {_, 0} = System.cmd("kill", ["-#{signal}", Integer.to_string(os_pid)])
    :ok
  end

  @doc "The OS pids of a pool's ready workers."
  @spec worker_os_pids(atom()) :: [non_neg_integer()]
  def worker_os_pids(pool) do
    for %{os_pid: p} <- Krait.Pool.stats(pool).workers, p != nil, do: p
  end

  @doc """
  What the showcase adapter of one worker recorded for `tag` (`stream_events`), asked over the
  worker's channel directly, so it works while the pool has the worker checked out.
  """
  @spec worker_events(atom(), String.t(), String.t()) :: map()
  def worker_events(pool, worker_id, tag) do
    %{pid: pid} = Enum.find(Krait.Pool.stats(pool).workers, &(&1.id == worker_id))

    channel =
      case :sys.get_state(pid) do
        %{transport: :grpc, conn: conn} -> {Krait.GRPC.Connection, conn}
        %{endpoint: _, conn: conn} -> {Krait.GRPC.Connection, conn}
        _ -> {Krait.Link, pid}
      end

    request =
      Krait.Proto.ExecuteToolRequest.encode(%Krait.Proto.ExecuteToolRequest{
        tool_name: "stream_events",
        args_json: IO.iodata_to_binary(Krait.JSON.encode!(%{tag: tag}))
      })

    path = "/krait.v1.ToolWorker/ExecuteTool"
    {:ok, response} = Krait.Channel.unary(channel, path, request, 5_000)
    Krait.JSON.decode!(Krait.Proto.ExecuteToolResponse.decode(response).data)
  end

  @doc "A unique tag for tools that record what happened to a stream."
  @spec tag() :: String.t()
  def tag, do: "t#{System.unique_integer([:positive])}"
end
