# Remote pools: the same showcase worker reached over TLS and in plain text (a token both ways), and a call
# served by another BEAM node's worker beside one served by the local node's (two :peer nodes,
# distribution and epmd on 127.0.0.1 only; an epmd the benchmark started is stopped after). Prints `BENCH {json}`
# lines like bench.exs; scripts/bench runs it after bench.exs. Row 10's limit: bare sockets, TLS and plain, reading
# from scripts/benchmarks/tls_limit.py.
#
#   cd elixir_client && mix run bench/remote.exs              (quick)
#   cd elixir_client && KRAIT_BENCH='{"quick": false}' mix run bench/remote.exs
#   cd elixir_client && KRAIT_BENCH='{"cross_node_only": true}' mix run bench/remote.exs   (row 11 alone)
#
# Targets (issue 10): TLS costs at most 10% of 4 MiB-batch throughput; a cross-node call adds at most
# 100 us at p50. Certificates are made by tests/certs.py; workers bind 127.0.0.2 only.
defmodule KraitRemoteBench do
  @moduledoc false

  @root Path.expand("../..", __DIR__)
  @python Path.join(@root, ".venv/bin/python")

  def main do
    opts = System.get_env("KRAIT_BENCH", "{}") |> Krait.JSON.decode!()
    quick = Map.get(opts, "quick", true)

    cfg =
      if quick,
        do: %{items: 20_000, blobs: 8, calls: 300, runs: 1},
        else: %{items: 200_000, blobs: 128, calls: 3000, runs: 5}

    Logger.configure(level: :error)

    # {"cross_node_only": true}: row 11 alone
    unless opts["cross_node_only"], do: remote_pools(cfg)
    cross_node(cfg)
  end

  defp remote_pools(cfg) do
    dir = Path.join(System.tmp_dir!(), "krait-bench-certs-#{System.unique_integer([:positive])}")

    code =
      "import sys, pathlib; from tests.certs import make_certs; make_certs(pathlib.Path(sys.argv[1]))"

    {_, 0} = System.cmd(@python, ["-c", code, dir], cd: @root)
    token_file = Path.join(dir, "token")
    File.write!(token_file, "bench-token")

    tls_args = [
      "--tls-cert",
      Path.join(dir, "server.crt.pem"),
      "--tls-key",
      Path.join(dir, "server.key.pem"),
      "--token-file",
      token_file
    ]

    try do
      # both with the token (every listening worker wants one): what differs is TLS alone
      plain = measure(cfg, ["--token-file", token_file], token: "bench-token")

      tls =
        measure(cfg, tls_args, tls: [cacertfile: Path.join(dir, "ca.pem")], token: "bench-token")

      {limit_plain, limit_tls} = socket_limit(cfg, dir)

      for {name, p, t} <- [
            {"remote_items_per_s", plain.items, tls.items},
            {"remote_mib_per_s_4mib", plain.mib, tls.mib},
            {"remote_unary_p50_us", plain.p50, tls.p50},
            {"tls_limit_mib_per_s", limit_plain, limit_tls}
          ] do
        IO.puts(
          "BENCH " <>
            Krait.JSON.encode!(%{
              name: name,
              plain: p,
              tls: t,
              tls_over_plain: Float.round(t / p, 3)
            })
        )
      end
    after
      File.rm_rf(dir)
    end
  end

  # Two :peer nodes with one-worker cluster pools: p50 of a unary call from node A served by A's own
  # worker, then by B's (A's worker held by a blocking stream). Timed on A (:timer.tc there).
  defp cross_node(cfg) do
    epmd_was_running = match?({_, 0}, System.cmd("epmd", ["-names"], stderr_to_stdout: true))

    peers =
      for name <- [:bench_a, :bench_b] do
        {:ok, peer, node} =
          :peer.start(%{
            name: name,
            host: ~c"127.0.0.1",
            longnames: true,
            connection: :standard_io,
            env: [{~c"ERL_EPMD_ADDRESS", ~c"127.0.0.1"}],
            args:
              [
                ~c"-setcookie",
                ~c"krait_bench",
                ~c"-kernel",
                ~c"inet_dist_use_interface",
                ~c"{127,0,0,1}"
              ] ++
                Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
          })

        {peer, node}
      end

    try do
      opts = [
        name: Krait.Pool,
        adapter: "adapters.showcase:ShowcaseAdapter",
        size: 1,
        python: @python,
        cwd: @root,
        cluster: true
      ]

      for {peer, _} <- peers do
        {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:logger])
        :ok = :peer.call(peer, Logger, :configure, [[level: :error]])
        :ok = :peer.call(peer, Application, :put_env, [:krait, :pool, opts])
        {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:krait])
        :ok = :peer.call(peer, Krait.Pool, :await_ready, [Krait.Pool, 30_000], 35_000)
      end

      [{a, _}, {b, node_b}] = peers
      true = :peer.call(a, :net_kernel, :connect_node, [node_b])
      wait(fn -> :peer.call(a, Krait.Pool.Cluster, :others, [Krait.Pool]) != [] end)

      :peer.call(a, :erlang, :spawn, [
        Krait,
        :execute_stream,
        ["blocking_stream", %{seconds: 600}, &Function.identity/1, []]
      ])

      wait(fn -> :peer.call(a, Krait.Pool, :stats, [Krait.Pool]).busy == 1 end)
      wait(fn -> :peer.call(a, Krait.Pool.Cluster, :by_idle, [Krait.Pool]) != [] end)
      r = cross_node_interleaved(a, b, node_b, cfg.calls)

      IO.puts(
        "BENCH " <>
          Krait.JSON.encode!(%{
            name: "cross_node_unary_p50_us",
            # B's own caller on B's worker: the same worker A's calls below reach
            local: r.local,
            other_node: r.direct,
            added_us: r.direct - r.local,
            # the floor of what a call served elsewhere adds: one round trip of distributed Erlang
            # (:erpc.call of :erlang.node/0 from A to B)
            dist_rtt_us: r.rtt,
            # the same calls made the way they were before issue 22: the caller asks its own
            # scheduler first (answered :no_idle_here), then the other node
            other_node_asking_own_scheduler_first: r.asking,
            asking_first_added_us: r.asking - r.local,
            # the same call on a lease of the other node's worker, its frames through that node's
            # worker process (how streams and calls with a session, input or handlers go there)
            other_node_with_lease: r.lease,
            lease_added_us: r.lease - r.local
          })
      )
    after
      for {peer, _} <- peers, do: :peer.stop(peer)
      # epmd refuses -kill while the stopped nodes' names linger a moment
      unless epmd_was_running do
        wait(fn ->
          not (elem(System.cmd("epmd", ["-names"], stderr_to_stdout: true), 0) =~ "name ")
        end)

        System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
      end
    end
  end

  # p50s of unary calls served by node B's worker, interleaved in blocks of 50 (the sampling runs on
  # the calling node, in a module loaded there): B's own caller (local); A's caller, as Krait makes
  # the call (A's cells say nothing is idle on A: run whole on B); the same asking A's scheduler
  # first (the published signal forced off for the block), and on a lease of B's worker; and the
  # distribution's round trip from A to B.
  defp cross_node_interleaved(a, b, node_b, calls) do
    [{mod, bin}] =
      Code.compile_string(~S"""
      defmodule KraitRemoteBench.OnNode do
        @moduledoc false
        def samples(signal?, n, opts \\ []) do
          Krait.Pool.Cells.set_overflow(Krait.Pool.Cells.lookup(Krait.Pool), signal?)

          for _ <- 1..n do
            {us, {:ok, _}} = :timer.tc(Krait, :execute, ["add", %{a: 1, b: 2}, opts])
            us
          end
        after
          Krait.Pool.Cells.set_overflow(Krait.Pool.Cells.lookup(Krait.Pool), true)
        end

        def local(n) do
          for _ <- 1..n do
            {us, {:ok, _}} = :timer.tc(Krait, :execute, ["add", %{a: 1, b: 2}, []])
            us
          end
        end

        def rtt(node, n) do
          for _ <- 1..n do
            {us, ^node} = :timer.tc(:erpc, :call, [node, :erlang, :node, []])
            us
          end
        end
      end
      """)

    for peer <- [a, b],
        do: {:module, ^mod} = :peer.call(peer, :code, :load_binary, [mod, ~c"nofile", bin])

    # a handler the tool never calls: the call keeps its lease (Krait.Call.Elsewhere runs only calls
    # without handlers)
    lease = [handlers: %{"unused" => &Function.identity/1}]
    :peer.call(a, mod, :samples, [true, 50])
    :peer.call(b, mod, :local, [50])

    blocks =
      for _ <- 1..max(div(calls, 50), 1) do
        %{
          local: :peer.call(b, mod, :local, [50]),
          direct: :peer.call(a, mod, :samples, [true, 50]),
          asking: :peer.call(a, mod, :samples, [false, 50]),
          lease: :peer.call(a, mod, :samples, [true, 50, lease]),
          rtt: :peer.call(a, mod, :rtt, [node_b, 50])
        }
      end

    Map.new([:local, :direct, :asking, :lease, :rtt], fn key ->
      {key, blocks |> Enum.flat_map(& &1[key]) |> median_of()}
    end)
  end

  defp median_of(samples), do: Enum.at(Enum.sort(samples), div(length(samples), 2))

  # Row 10's limit: MiB/s read from a bare socket (the options Krait's connection uses), plain and TLS,
  # from scripts/benchmarks/tls_limit.py; median of cfg.runs each.
  defp socket_limit(cfg, dir) do
    mib = cfg.blobs * 4

    port =
      Port.open({:spawn_executable, @python}, [
        :binary,
        {:line, 1024},
        {:cd, @root},
        {:args,
         [
           "-m",
           "scripts.benchmarks.tls_limit",
           "127.0.0.2",
           Path.join(dir, "server.crt.pem"),
           Path.join(dir, "server.key.pem"),
           to_string(mib)
         ]}
      ])

    receive do
      {^port, {:data, {:eol, "READY " <> ports}}} ->
        [plain_port, tls_port] = ports |> String.split() |> Enum.map(&String.to_integer/1)
        read = fn mod, tcp_port -> median(cfg.runs, fn -> socket_rate(mod, tcp_port, mib) end) end
        result = {read.(:gen_tcp, plain_port), read.(:ssl, tls_port)}
        Port.close(port)
        result
    after
      20_000 -> raise "tls_limit.py did not start"
    end
  end

  defp socket_rate(mod, tcp_port, mib) do
    opts = [:binary, packet: :raw, active: 100, nodelay: true, buffer: 262_144]
    opts = if mod == :ssl, do: opts ++ [verify: :verify_none], else: opts
    {:ok, socket} = mod.connect(~c"127.0.0.2", tcp_port, opts, 5_000)
    setopts = if mod == :ssl, do: &:ssl.setopts/2, else: &:inet.setopts/2

    try do
      rate(mib, fn ->
        :ok = mod.send(socket, "g")
        drain(socket, setopts, mib * 1_048_576)
      end)
    after
      mod.close(socket)
    end
  end

  defp drain(_socket, _setopts, left) when left <= 0, do: :ok

  defp drain(socket, setopts, left) do
    receive do
      {tag, ^socket, data} when tag in [:tcp, :ssl] ->
        drain(socket, setopts, left - byte_size(data))

      {tag, ^socket} when tag in [:tcp_passive, :ssl_passive] ->
        :ok = setopts.(socket, active: 100)
        drain(socket, setopts, left)
    after
      10_000 -> raise "the socket limit stalled"
    end
  end

  defp wait(fun, tries \\ 500) do
    cond do
      fun.() -> :ok
      tries == 0 -> raise "condition not met"
      true -> Process.sleep(10) && wait(fun, tries - 1)
    end
  end

  defp measure(cfg, worker_args, pool_opts) do
    port =
      Port.open({:spawn_executable, @python}, [
        :binary,
        :exit_status,
        {:line, 65_536},
        {:cd, @root},
        {:args,
         [
           "-m",
           "python_worker",
           "serve",
           "--adapter",
           "adapters.showcase:ShowcaseAdapter",
           "--host",
           "127.0.0.2",
           "--port",
           "0",
           "--log-level",
           "error" | worker_args
         ]}
      ])

    tcp_port = ready(port)
    name = :"RemoteBench#{System.unique_integer([:positive])}"

    {:ok, sup} =
      Krait.Pool.start_link([name: name, endpoints: ["127.0.0.2:#{tcp_port}"]] ++ pool_opts)

    :ok = Krait.Pool.await_ready(name, 20_000)

    try do
      items =
        median(cfg.runs, fn ->
          rate(cfg.items, fn ->
            Krait.stream("stream_small", %{count: cfg.items}, pool: name) |> Stream.run()
          end)
        end)

      mib =
        median(cfg.runs, fn ->
          rate(cfg.blobs * 4, fn ->
            Krait.stream("stream_arrays", %{batches: cfg.blobs}, pool: name) |> Stream.run()
          end)
        end)

      p50 =
        median(cfg.runs, fn ->
          samples =
            for _ <- 1..cfg.calls,
                do:
                  elem(
                    :timer.tc(fn -> {:ok, _} = Krait.execute("add", %{a: 1, b: 2}, pool: name) end),
                    0
                  )

          Enum.at(Enum.sort(samples), div(length(samples), 2))
        end)

      %{items: round(items), mib: Float.round(mib, 1), p50: p50}
    after
      Supervisor.stop(sup)
      Port.close(port)
    end
  end

  defp ready(port) do
    receive do
      {^port, {:data, {:eol, "KRAIT_READY " <> json}}} -> Krait.JSON.decode!(json)["port"]
      {^port, {:data, _}} -> ready(port)
      {^port, {:exit_status, s}} -> raise "worker exited with #{s}"
    after
      30_000 -> raise "worker not ready"
    end
  end

  defp rate(count, fun) do
    {us, _} = :timer.tc(fun)
    count / (us / 1_000_000)
  end

  defp median(runs, fun) do
    values = Enum.sort(for _ <- 1..runs, do: fun.())
    Enum.at(values, div(runs, 2))
  end
end

KraitRemoteBench.main()
