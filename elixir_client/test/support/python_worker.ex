defmodule Krait.Test.PythonWorker do
  @moduledoc """
  Starts a real Krait Python worker (`python -m python_worker serve`) for integration
  tests and stops it again.

  The worker runs under a `Port` whose stdin it watches: when the port closes (the test
  process exits or `stop/1` is called) the worker exits by itself. Its stderr (logs) goes
  to a file in the system temp dir, so test output stays clean.

  A worker serving TCP needs a credential. Unless `args` give one (`--token-file`,
  `--tls-client-ca`) or `token: :generated` asks for the worker's own (announced on its
  `KRAIT_READY` line, kept in `:token`), it is started with `--no-auth`: these tests are about the
  gRPC client's mechanics, and the token tests say so. `KRAIT_TOKEN`/`KRAIT_TOKEN_FILE` of the
  BEAM's environment never reach it.
  """

  @repo Path.expand("../../..", __DIR__)
  @python Path.join(@repo, ".venv/bin/python")
  @stubs Path.join(@repo, "python_worker/_generated/krait/v1/worker_pb2.py")

  defstruct [:port, :tcp_port, :os_pid, :log, :token]

  @type t :: %__MODULE__{
          port: port,
          tcp_port: pos_integer,
          os_pid: pos_integer,
          log: Path.t(),
          token: String.t() | nil
        }

  @doc "The repository root (holding `proto/`, `python_worker/`, `.venv/`)."
  @spec repo() :: Path.t()
  def repo, do: @repo

  @doc "The project's Python interpreter."
  @spec python() :: Path.t()
  def python, do: @python

  @doc "True when the worker and its interpreter are present."
  @spec available?() :: boolean
  def available? do
    File.exists?(@python) and File.exists?(Path.join(@repo, "python_worker/__main__.py"))
  end

  @doc """
  Generates the Python protobuf/gRPC stubs if they are missing (they are not committed).
  Test modules run concurrently, so generation is serialized with a global lock.
  """
  @spec ensure_stubs!() :: :ok
  def ensure_stubs! do
    :global.trans({__MODULE__, :stubs}, fn ->
      unless File.exists?(@stubs) do
        args =
          ~w(-m grpc_tools.protoc -Ipython_worker/_generated=proto --python_out=. --grpc_python_out=. --pyi_out=. proto/krait/v1/worker.proto)

        {out, status} = System.cmd(@python, args, cd: @repo, stderr_to_stdout: true)
        if status != 0, do: raise("generating stubs failed: #{out}")
      end
    end)

    :ok
  end

  @doc """
  Starts a worker serving `adapter` on a free port of 127.0.0.1 and waits (up to
  `timeout` ms) for its `KRAIT_READY` line. Extra CLI arguments go in `args`.
  """
  @spec start(keyword) :: t
  def start(opts \\ []) do
    ensure_stubs!()
    adapter = Keyword.get(opts, :adapter, "adapters.showcase:ShowcaseAdapter")
    timeout = Keyword.get(opts, :timeout, 20_000)

    log =
      Path.join(System.tmp_dir!(), "krait-test-worker-#{System.unique_integer([:positive])}.log")

    args = Keyword.get(opts, :args, [])

    credential =
      if Keyword.get(opts, :token) == :generated or "--token-file" in args or
           "--tls-client-ca" in args,
         do: [],
         else: ["--no-auth"]

    worker_args =
      ["-m", "python_worker", "serve", "--adapter", adapter, "--port", "0"] ++ credential ++ args

    # sh only redirects stderr, then execs python, which keeps the port's stdin.
    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :binary,
        :exit_status,
        {:line, 65_536},
        {:cd, @repo},
        {:env, [{~c"KRAIT_TOKEN", false}, {~c"KRAIT_TOKEN_FILE", false}]},
        {:args, ["-c", ~s(exec "$0" "$@" 2>>"#{log}"), @python | worker_args]}
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    deadline = System.monotonic_time(:millisecond) + timeout
    {tcp_port, token} = await_ready(port, deadline, log)
    %__MODULE__{port: port, tcp_port: tcp_port, os_pid: os_pid, log: log, token: token}
  end

  defp await_ready(port, deadline, log) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {:eol, "KRAIT_READY " <> json}}} ->
        %{"port" => tcp_port} = ready = :jiffy.decode(json, [:return_maps])
        {tcp_port, Map.get(ready, "token")}

      {^port, {:data, _other}} ->
        await_ready(port, deadline, log)

      {^port, {:exit_status, status}} ->
        raise "worker exited with status #{status} before it was ready; log: #{File.read!(log)}"
    after
      remaining ->
        Port.close(port)
        raise "worker not ready within the timeout; log: #{File.read!(log)}"
    end
  end

  @doc """
  Stops a worker: closes its stdin and waits up to `timeout` ms for it to exit, killing
  it if it does not; then removes its log.
  """
  @spec stop(t, timeout) :: :ok
  def stop(%__MODULE__{port: port, os_pid: os_pid, log: log}, timeout \\ 5000) do
    if Port.info(port) != nil do
      try do
        Port.close(port)
      rescue
        ArgumentError -> :ok
      end
    end

    wait_exit(os_pid, System.monotonic_time(:millisecond) + timeout)
    File.rm(log)
    :ok
  end

  defp wait_exit(os_pid, deadline) do
    cond do
      not Krait.TestHelpers.os_alive?(os_pid) ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true)
        :ok

      true ->
        Process.sleep(20)
        wait_exit(os_pid, deadline)
    end
  end
end
