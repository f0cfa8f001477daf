defmodule Krait.Pool.TokenTest do
  # The token of a pool: an endpoint pool finds the workers' token in `:token`, `:token_file`,
  # `$KRAIT_TOKEN` or `$KRAIT_TOKEN_FILE`; a pool whose started workers listen on TCP (`transport:
  # :grpc`, `expose_grpc`, `http_port`) makes one, gives it to them in their environment (never in
  # argv), calls them with it and shows it in its stats, so that a caller without it (any other
  # local user) is refused on every port. Real Python workers, real sockets.
  #
  # Not async: the tests of `$KRAIT_TOKEN*` change the BEAM's environment.
  use ExUnit.Case, async: false

  import Krait.TestHelpers
  alias Krait.GRPC.Connection
  alias Krait.Pool.Config

  @moduletag timeout: 60_000
  @ping "/krait.v1.ToolWorker/Ping"

  setup do
    saved = for name <- ["KRAIT_TOKEN", "KRAIT_TOKEN_FILE"], do: {name, System.get_env(name)}
    System.delete_env("KRAIT_TOKEN")
    System.delete_env("KRAIT_TOKEN_FILE")

    on_exit(fn ->
      for {name, value} <- saved,
          do: if(value, do: System.put_env(name, value), else: System.delete_env(name))
    end)

    :ok
  end

  defp remote_token(opts) do
    with {:ok, config} <- Config.build([endpoints: ["127.0.0.1:1"]] ++ opts) do
      {:ok, config.worker.token && config.worker.token.()}
    end
  end

  defp local(opts), do: Config.build(pool_opts(opts))

  describe "an endpoint pool's token" do
    @describetag :tmp_dir
    test ":token, else :token_file, else $KRAIT_TOKEN, else the file $KRAIT_TOKEN_FILE names",
         ctx do
      file = Path.join(ctx.tmp_dir, "token")
      File.write!(file, "  from-the-file\n")
      env_file = Path.join(ctx.tmp_dir, "env-token")
      File.write!(env_file, "from-the-env-file\n")

      assert {:ok, nil} = remote_token([])
      System.put_env("KRAIT_TOKEN_FILE", env_file)
      assert {:ok, "from-the-env-file"} = remote_token([])
      System.put_env("KRAIT_TOKEN", "from-the-env")
      assert {:ok, "from-the-env"} = remote_token([])
      assert {:ok, "from-the-file"} = remote_token(token_file: file)
      assert {:ok, "given"} = remote_token(token: "given")
    end

    test "an unreadable or empty file, or both options, are clear errors", ctx do
      missing = Path.join(ctx.tmp_dir, "missing")

      assert {:error, %Krait.Error{category: :invalid_argument, message: message}} =
               remote_token(token_file: missing)

      assert message ==
               "Krait.Pool: cannot read the token file #{missing} (:token_file): no such file or directory"

      empty = Path.join(ctx.tmp_dir, "empty")
      File.write!(empty, "\n")
      assert {:error, %{message: message}} = remote_token(token_file: empty)
      assert message == "Krait.Pool: the token file #{empty} (:token_file) is empty"

      System.put_env("KRAIT_TOKEN_FILE", missing)
      assert {:error, %{message: message}} = remote_token([])
      assert message =~ "cannot read the token file #{missing} ($KRAIT_TOKEN_FILE)"

      assert {:error, %{message: "Krait.Pool: give :token or :token_file, not both"}} =
               remote_token(token: "a", token_file: empty)
    end
  end

  describe "a local pool's token" do
    test "listening workers get a new 256-bit token per pool; link-only ones none" do
      for listening <- [[transport: :grpc], [expose_grpc: true], [http_port: 0]] do
        {:ok, a} = local(listening)
        {:ok, b} = local(listening)
        assert a.token.() =~ ~r/^[A-Za-z0-9_-]{43}$/
        assert a.token.() != b.token.()
        assert a.worker.token == a.token
      end

      System.put_env("KRAIT_TOKEN", "the-beams-own")
      {:ok, link} = local([])
      assert link.token == nil and link.worker.token == nil
      {:ok, given} = local(expose_grpc: true, token: "given", env: [{"KRAIT_TOKEN", "other"}])
      assert given.token.() == "given"
      # the env option's KRAIT_TOKEN goes: the worker gets the pool's token, added when it spawns
      refute Enum.any?(given.worker.env, &match?({"KRAIT_TOKEN", _}, &1))
      refute inspect(given) =~ "given"
    end
  end

  describe "a pool exposing its workers" do
    test "gRPC: the pool calls with its token, a caller without it is refused, argv never holds it" do
      pool = start_pool!(size: 1, transport: :link, expose_grpc: true)
      %{token: token, workers: [%{os_pid: os_pid, grpc_port: port}]} = Krait.Pool.stats(pool)
      assert token =~ ~r/^[A-Za-z0-9_-]{43}$/
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)

      assert {:unauthenticated, _} = ping(port, %{})
      assert {:unauthenticated, _} = ping(port, %{"authorization" => "Bearer not-the-token"})
      assert {:ok, _} = ping(port, %{"authorization" => "Bearer " <> token})

      refute File.read!("/proc/#{os_pid}/cmdline") =~ token

      assert ("KRAIT_TOKEN=" <> token) in String.split(
               File.read!("/proc/#{os_pid}/environ"),
               <<0>>
             )
    end

    test "transport: :grpc connects with the pool's token" do
      pool = start_pool!(size: 1, transport: :grpc)
      %{token: token, workers: [%{grpc_port: port}]} = Krait.Pool.stats(pool)
      assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)
      assert {:unauthenticated, _} = ping(port, %{})
      assert {:ok, _} = ping(port, %{"authorization" => "Bearer " <> token})
    end

    test "HTTP: 401 without the pool's token, 200 with it" do
      pool = start_pool!(size: 1, http_port: 0, token: "the-pools-http-token")
      %{token: "the-pools-http-token", workers: [%{http_port: port}]} = Krait.Pool.stats(pool)
      {:ok, _} = Application.ensure_all_started(:inets)
      url = ~c"http://127.0.0.1:#{port}/v1/tools"
      assert {:ok, {{_, 401, _}, _, _}} = :httpc.request(:get, {url, []}, [timeout: 15_000], [])

      auth = [{~c"authorization", ~c"Bearer the-pools-http-token"}]

      assert {:ok, {{_, 200, _}, _, body}} =
               :httpc.request(:get, {url, auth}, [timeout: 15_000], [])

      assert to_string(body) =~ "stream_progress"
    end
  end

  # A Ping to 127.0.0.1:port with `metadata`: {:ok, reply} or {Remote.describe's reason, text}.
  defp ping(port, metadata) do
    {:ok, conn} = Connection.start_link(host: "127.0.0.1", port: port, metadata: metadata)
    request = Krait.Proto.PingRequest.encode(%Krait.Proto.PingRequest{message: "x"})

    try do
      case Connection.unary(conn, @ping, request, timeout: 10_000) do
        {:ok, reply} -> {:ok, reply}
        {:error, error} -> Krait.Worker.Remote.describe(error)
      end
    after
      Process.unlink(conn)
      GenServer.stop(conn)
    end
  end
end
