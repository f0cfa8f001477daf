defmodule Krait.Pool.RemoteTest do
  # Remote pools: real Python workers serving gRPC over TLS with a token on 127.0.0.2 / 127.0.0.3, a
  # pool defined by `endpoints:`, `tls:` and `token:`; and endpoints that must fail (a wrong or
  # missing token, an untrusted certificate, plain text against TLS and TLS against plain text).
  use ExUnit.Case, async: true

  import Krait.TestHelpers
  alias Krait.{Error, Test.Certs, Test.PythonWorker}

  @moduletag timeout: 120_000
  @token "remote-test-token"

  setup_all do
    certs = Certs.make!()
    token_file = Path.join(certs["dir"], "token")
    File.write!(token_file, @token)
    other_token = Path.join(certs["dir"], "other-token")
    File.write!(other_token, "not-the-pool-token")

    tls = ["--tls-cert", certs["server.crt"], "--tls-key", certs["server.key"]]
    good = ["--token-file", token_file | tls]

    workers = %{
      a: start_worker(["--host", "127.0.0.2" | good]),
      b: start_worker(["--host", "127.0.0.3" | good]),
      wrong_token: start_worker(["--host", "127.0.0.2", "--token-file", other_token | tls]),
      rogue:
        start_worker([
          "--host",
          "127.0.0.3",
          "--token-file",
          token_file,
          "--tls-cert",
          certs["rogue.crt"],
          "--tls-key",
          certs["rogue.key"]
        ]),
      plain: start_worker(["--host", "127.0.0.2", "--token-file", token_file])
    }

    on_exit(fn -> Enum.each(workers, fn {_, w} -> PythonWorker.stop(w) end) end)
    endpoint = fn key, host -> "#{host}:#{workers[key].tcp_port}" end

    good_endpoints = [endpoint.(:a, "127.0.0.2"), endpoint.(:b, "127.0.0.3")]

    pool =
      start_module_pool!(
        endpoints: good_endpoints,
        tls: [cacertfile: certs["ca"]],
        token: @token,
        health_interval: 200
      )

    %{pool: pool, certs: certs, endpoint: endpoint, good: good_endpoints}
  end

  defp start_worker(args), do: PythonWorker.start(args: args)

  defp remote_pool(opts) do
    name = :"KraitRemote#{System.unique_integer([:positive])}"
    base = [name: name, backoff_min: 50, backoff_max: 200, connect_timeout: 2_000]
    start_supervised!({Krait.Pool, Keyword.merge(base, opts)}, id: name)
    name
  end

  test "a remote TLS pool runs unary calls, streams and Krait.stream", %{pool: pool, good: good} do
    assert {:ok, 5.0} = Krait.execute("add", %{a: 2, b: 3}, pool: pool)
    test = self()

    assert :ok =
             Krait.execute_stream("stream_numbers", %{count: 3}, &send(test, {:chunk, &1}),
               pool: pool
             )

    assert [0, 1, 2] = for(_ <- 1..3, do: receive(do: ({:chunk, c} -> c.data["number"])))
    # the numbers and the final chunk
    assert 5 == Krait.stream("stream_numbers", %{count: 4}, pool: pool) |> Enum.count()

    stats = Krait.Pool.stats(pool)
    assert %{size: 2, ready: 2} = stats
    assert Enum.map(stats.workers, & &1.endpoint) == good
  end

  test "the token shows nowhere in the processes' state (crash reports, :sys)", %{pool: pool} do
    [%{pid: worker} | _] = Krait.Pool.stats(pool).workers
    conn = :sys.get_state(worker).conn
    # the connection holds it to send it; its status (what a crash report prints) does not show it
    assert {"authorization", "Bearer " <> @token, :never_store} in elem(:sys.get_state(conn), 1).headers

    for pid <- [Process.whereis(pool), worker, conn] do
      refute inspect(:sys.get_status(pid), limit: :infinity, printable_limit: :infinity) =~ @token
    end

    # it is sent all the same: the worker would refuse the calls without it
    assert {:ok, 2.0} = Krait.execute("add", %{a: 1, b: 1}, pool: pool)
  end

  test "calls queue for the remote workers and a session keeps its worker", %{pool: pool} do
    session = "remote-session-#{System.unique_integer([:positive])}"
    count = fn -> Krait.execute("session_counter", %{}, pool: pool, session_id: session) end
    assert {:ok, %{"count" => 1, "worker_id" => wid}} = count.()
    assert {:ok, %{"count" => 2, "worker_id" => ^wid}} = count.()

    test = self()

    holders =
      for _ <- 1..2 do
        Task.async(fn ->
          Krait.execute_stream("blocking_stream", %{seconds: 20}, fn _ -> send(test, :held) end,
            pool: pool
          )
        end)
      end

    for _ <- 1..2, do: assert_receive(:held, 5_000)

    waiter =
      Task.async(fn -> Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 10_000) end)

    eventually(fn -> Krait.Pool.stats(pool).queue_length == 1 end)
    Enum.each(holders, &Task.shutdown(&1, :brutal_kill))
    assert {:ok, 2.0} = Task.await(waiter, 10_000)
    # the session's state is still on its worker
    assert {:ok, %{"count" => 3, "worker_id" => ^wid}} = count.()
  end

  test "a call's timeout reaches the remote worker, which stops the tool", %{pool: pool} do
    tag = tag()

    assert {:error, %Error{category: :timeout}} =
             Krait.execute("slow_tool", %{seconds: 10, tag: tag}, pool: pool, timeout: 300)

    assert eventually(fn ->
             Enum.any?(remote_ids(pool), &(worker_events(pool, &1, tag)["cancel_seen"] != nil))
           end)
  end

  test "a caller that gives up cancels the stream on the remote worker", %{pool: pool} do
    tag = tag()
    test = self()

    caller =
      spawn(fn ->
        Krait.execute_stream(
          "blocking_stream",
          %{seconds: 20, tag: tag},
          fn _ -> send(test, :held) end,
          pool: pool
        )
      end)

    assert_receive :held, 5_000
    Process.exit(caller, :kill)

    assert eventually(fn ->
             Enum.any?(remote_ids(pool), &(worker_events(pool, &1, tag)["cancel_seen"] != nil))
           end)
  end

  defp remote_ids(pool),
    do: for(%{id: id, status: s} <- Krait.Pool.stats(pool).workers, s != :restarting, do: id)

  test "bad endpoints fail with their own errors while the good one serves", ctx do
    %{certs: certs, endpoint: endpoint} = ctx
    # a port nothing listens on: the plain worker's, once stopped, is never reused in this test
    endpoints = [
      endpoint.(:a, "127.0.0.2"),
      endpoint.(:wrong_token, "127.0.0.2"),
      endpoint.(:rogue, "127.0.0.3"),
      endpoint.(:plain, "127.0.0.2")
    ]

    pool = remote_pool(endpoints: endpoints, tls: [cacertfile: certs["ca"]], token: @token)
    assert {:ok, 3.0} = Krait.execute("add", %{a: 1, b: 2}, pool: pool)

    errors =
      eventually(fn ->
        errors = for w <- Krait.Pool.stats(pool).workers, into: %{}, do: {w.slot, w.last_error}
        if Enum.all?(2..4, &(errors[&1] != nil)), do: errors
      end)

    assert %{status: s} = Enum.at(Krait.Pool.stats(pool).workers, 0)
    assert s in [:idle, :busy]
    assert errors[2].reason == :unauthenticated
    assert errors[2].output =~ "refused the token"
    assert errors[3].reason == {:tls_alert, :unknown_ca}
    assert errors[4].reason == {:tls_alert, :unexpected_message}
    assert errors[4].output =~ "does not speak TLS"
    # the good endpoint keeps serving
    assert {:ok, 4.0} = Krait.execute("add", %{a: 2, b: 2}, pool: pool)
  end

  test "a pool with no reachable endpoint fails fast, naming each endpoint's error", ctx do
    %{certs: certs, endpoint: endpoint} = ctx
    tls_worker = endpoint.(:a, "127.0.0.2")
    # plain text against a TLS worker, and no token
    pool = remote_pool(endpoints: [tls_worker])

    assert {:error, %Error{category: :pool, message: message, details: details}} =
             wait_failing(pool)

    assert message =~ "no endpoint of the pool is reachable: #{tls_worker}"
    assert message =~ "is it serving TLS?"
    assert [{^tls_worker, _reason}] = details.endpoints

    # TLS, but no token
    pool = remote_pool(endpoints: [tls_worker], tls: [cacertfile: certs["ca"]])
    assert {:error, %Error{message: message}} = wait_failing(pool)
    assert message =~ "#{tls_worker} (:unauthenticated)"
    assert message =~ "refused the token"
  end

  test "the server's host name is verified", %{certs: certs} do
    # signed by the trusted CA, but for 127.0.0.9
    args = [
      "--host",
      "127.0.0.2",
      "--tls-cert",
      certs["elsewhere.crt"],
      "--tls-key",
      certs["elsewhere.key"]
    ]

    worker = start_worker(args)
    on_exit(fn -> PythonWorker.stop(worker) end)
    target = "127.0.0.2:#{worker.tcp_port}"
    pool = remote_pool(endpoints: [target], tls: [cacertfile: certs["ca"]])
    assert {:error, %Error{message: message}} = wait_failing(pool)
    assert message =~ "#{target} (:tls_hostname)"
    assert message =~ "the server's certificate is not for 127.0.0.2"
  end

  test "an endpoint gives calls_per_worker leases", ctx do
    %{certs: certs, endpoint: endpoint} = ctx

    pool =
      remote_pool(
        endpoints: [endpoint.(:b, "127.0.0.3")],
        tls: [cacertfile: certs["ca"]],
        token: @token,
        calls_per_worker: 2
      )

    assert :ok = Krait.Pool.await_ready(pool, 10_000)
    hold_and_queue(pool, 2)
  end

  test "a dns:// endpoint is a worker per address, re-resolved", %{certs: certs} do
    # The BEAM's own hosts table answers for workers.krait.test (OTP's inet_db, consulted first
    # for this test's lookups): the real :inet resolution path, with answers the test can change.
    previous = :inet_db.res_option(:lookup)
    :ok = :inet_db.set_lookup([:file | previous -- [:file]])
    name = ~c"workers.krait.test"

    on_exit(fn ->
      :inet_db.del_host({127, 0, 0, 2})
      :inet_db.del_host({127, 0, 0, 3})
      :inet_db.set_lookup(previous)
    end)

    args = ["--tls-cert", certs["server.crt"], "--tls-key", certs["server.key"]]
    first = start_worker(["--host", "127.0.0.2" | args])
    port = first.tcp_port
    second = start_worker(["--host", "127.0.0.3", "--port", "#{port}" | args])
    on_exit(fn -> Enum.each([first, second], &PythonWorker.stop/1) end)

    :inet_db.add_host({127, 0, 0, 2}, [name])
    spec = "dns://workers.krait.test:#{port}"
    pool = remote_pool(endpoints: [spec], tls: [cacertfile: certs["ca"]], dns_interval: 100)
    assert :ok = Krait.Pool.await_ready(pool, 10_000)
    label = fn ip -> "workers.krait.test:#{port} (#{ip})" end
    endpoints = fn -> Krait.Pool.stats(pool).workers |> Enum.map(& &1.endpoint) |> Enum.sort() end
    assert endpoints.() == [label.("127.0.0.2")]

    # a new address joins
    :inet_db.add_host({127, 0, 0, 3}, [name])
    eventually(fn -> endpoints.() == [label.("127.0.0.2"), label.("127.0.0.3")] end)
    eventually(fn -> Krait.Pool.stats(pool).ready == 2 end)

    # a gone one leaves; calls keep working on the rest
    :inet_db.del_host({127, 0, 0, 2})
    eventually(fn -> endpoints.() == [label.("127.0.0.3")] end)

    for _ <- 1..3 do
      assert {:ok, %{"worker_id" => _}} =
               Krait.execute("session_counter", %{}, pool: pool, session_id: "dns")
    end
  end

  test "remote options are checked" do
    assert {:error, %Error{category: :invalid_argument, message: m}} =
             Krait.Pool.start_link(name: :krait_bad_remote, endpoints: ["no-port"])

    assert m =~ ~s(endpoint "no-port" is not "host:port")

    assert {:error, %Error{message: m}} =
             Krait.Pool.start_link(name: :krait_bad_remote, endpoints: ["h:1"], adapter: "a:B")

    assert m =~ "not both"

    assert {:error, %Error{message: m}} =
             Krait.Pool.start_link(pool_opts(name: :krait_bad_remote, tls: true))

    assert m =~ "[:tls] apply to :endpoints only"
  end

  defp wait_failing(pool) do
    eventually(
      fn ->
        case Krait.execute("add", %{a: 1, b: 1}, pool: pool, timeout: 5_000) do
          {:error, %Error{details: %{reason: :workers_failing}}} = error -> error
          _ -> nil
        end
      end,
      15_000
    )
  end
end
