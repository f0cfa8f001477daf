defmodule Krait.TestPrometheus do
  @moduledoc """
  A real Prometheus server for tests: Debian's `prometheus`, started on loopback with a generated
  config and a 200 ms scrape interval, queried over its HTTP API with `:httpc`, stopped by its OS pid
  when the test ends.
  """

  import ExUnit.Assertions
  import Krait.TestHelpers

  @doc """
  Starts Prometheus scraping `targets` (`job => "host:port"`, or `job => {"host:port",
  credentials_file}` for a target wanting a bearer token); returns its base URL.
  """
  @spec start!(%{String.t() => String.t() | {String.t(), String.t()}}, String.t()) :: String.t()
  def start!(targets, dir) do
    binary = System.find_executable("prometheus")

    assert binary,
           "the prometheus server is missing: scripts/setup installs Debian's prometheus package"

    jobs =
      Enum.map_join(targets, fn
        {job, {target, credentials}} ->
          "  - job_name: #{job}\n    authorization:\n      credentials_file: #{credentials}\n" <>
            "    static_configs:\n      - targets: ['#{target}']\n"

        {job, target} ->
          "  - job_name: #{job}\n    static_configs:\n      - targets: ['#{target}']\n"
      end)

    config = Path.join(dir, "prometheus.yml")
    File.write!(config, "global:\n  scrape_interval: 200ms\nscrape_configs:\n#{jobs}")
    port = free_port()

    args = [
      "--config.file=#{config}",
      "--storage.tsdb.path=#{Path.join(dir, "data")}",
      "--web.listen-address=127.0.0.1:#{port}",
      "--log.level=warn"
    ]

    erl_port =
      Port.open({:spawn_executable, binary}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: args
      ])

    {:os_pid, os_pid} = Port.info(erl_port, :os_pid)

    ExUnit.Callbacks.on_exit(fn ->
      System.cmd("kill", ["-TERM", Integer.to_string(os_pid)])
      eventually(fn -> not os_alive?(os_pid) end, 10_000)
    end)

    url = "http://127.0.0.1:#{port}"
    eventually(fn -> match?({:ok, {{_, 200, _}, _, _}}, get(url <> "/-/ready")) end, 30_000)
    url
  end

  @doc "The value of the one sample `promql` evaluates to, or nil when it has none yet."
  @spec value(String.t(), String.t()) :: float() | nil
  def value(url, promql) do
    {:ok, {{_, 200, _}, _, body}} =
      get(url <> "/api/v1/query?" <> URI.encode_query(query: promql))

    %{"status" => "success", "data" => %{"result" => result}} = Krait.JSON.decode!(body)

    case result do
      [] -> nil
      [%{"value" => [_time, value]}] -> value |> Float.parse() |> elem(0)
    end
  end

  @doc "An HTTP GET with `:httpc` (`headers` as charlist pairs)."
  @spec get(String.t(), [{charlist(), charlist()}]) :: {:ok, term()} | {:error, term()}
  def get(url, headers \\ []),
    do:
      :httpc.request(:get, {String.to_charlist(url), headers}, [timeout: 5_000],
        body_format: :binary
      )

  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end
end
