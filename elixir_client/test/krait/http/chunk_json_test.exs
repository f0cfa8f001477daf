defmodule Krait.ChunkJSONTest do
  # What a Phoenix app forwards from Krait.stream/3 is exactly what the worker's HTTP front sends: the same
  # streams, read from a real pool worker (over the link) and from that worker's own HTTP front (the pool
  # option :http_port), give the same chunk JSON and the same error JSON.
  use ExUnit.Case, async: true

  import Krait.TestHelpers

  alias Krait.ChunkJSON

  @moduletag timeout: 120_000

  setup_all do
    pool = start_module_pool!(size: 1, http_port: 0)
    %{workers: [%{http_port: port}], token: token} = Krait.Pool.stats(pool)
    %{pool: pool, base: "http://127.0.0.1:#{port}", token: token}
  end

  # the chunk JSON of a stream over the worker's HTTP front: [{event, json}]
  defp sse(ctx, tool, args) do
    url = String.to_charlist("#{ctx.base}/v1/tools/#{tool}/stream")
    body = IO.iodata_to_binary(Krait.JSON.encode!(args))
    request = {url, bearer(ctx.token), ~c"application/json", body}

    {:ok, {{_, 200, _}, headers, text}} =
      :httpc.request(:post, request, [timeout: 30_000], body_format: :binary)

    assert {~c"content-type", ~c"text/event-stream; charset=utf-8"} in headers

    for event <- String.split(text, "\n\n", trim: true) do
      fields =
        for line <- String.split(event, "\n"), into: %{} do
          [key, value] = String.split(line, ": ", parts: 2)
          {key, value}
        end

      {fields["event"], Krait.JSON.decode!(fields["data"])}
    end
  end

  # the pool gave its listening workers a token of its own
  defp bearer(token), do: [{~c"authorization", String.to_charlist("Bearer " <> token)}]

  defp timeless(%{"metadata" => meta} = map),
    do: %{map | "metadata" => Map.delete(meta, "execution_time_ms")}

  defp timeless(other), do: other

  for {tool, args} <- [
        {"stream_items", %{count: 3}},
        {"stream_numbers", %{count: 40}},
        {"stream_text", %{lines: 2}},
        {"stream_arrays", %{batches: 2, batch_rows: 3, cols: 4}},
        {"stream_arrays", %{batches: 1, batch_rows: 2, cols: 2, as_json: true}},
        {"progress_demo", %{steps: 2}}
      ] do
    test "#{tool} #{inspect(args)}: the same chunk JSON as the worker's HTTP front", ctx do
      tool = unquote(tool)
      args = unquote(Macro.escape(args))
      chunks = Krait.stream(tool, args, pool: ctx.pool) |> Enum.to_list()

      from_elixir =
        for c <- chunks, do: {if(c.is_final, do: "final", else: "chunk"), ChunkJSON.to_map(c)}

      from_http = sse(ctx, tool, args)
      assert length(from_elixir) == length(from_http)

      for {chunk, {event, mine}, {http_event, theirs}} <-
            Enum.zip([chunks, from_elixir, from_http]) do
        assert event == http_event
        assert timeless(mine) == timeless(theirs)
        # the JSON text is the same chunk
        assert Krait.JSON.decode!(IO.iodata_to_binary(ChunkJSON.encode(chunk))) == mine
      end
    end
  end

  test "an array chunk carries dtype, shape and the raw bytes in base64", ctx do
    [array | _] =
      Krait.stream("stream_arrays", %{batches: 1, batch_rows: 2, cols: 3}, pool: ctx.pool)
      |> Enum.to_list()

    %{"dtype" => "<f4", "shape" => [2, 3], "base64" => b64} = ChunkJSON.to_map(array)["data"]
    assert Base.decode64!(b64) == array.data.data
    assert byte_size(Base.decode64!(b64)) == 2 * 3 * 4
  end

  test "the SSE event of a chunk is the front's", ctx do
    [first, final] = Krait.stream("stream_items", %{count: 2}, pool: ctx.pool) |> Enum.to_list()
    text = IO.iodata_to_binary(ChunkJSON.sse_event(first))
    assert text =~ ~r/\Aevent: chunk\nid: 0\ndata: \{.*\}\n\n\z/
    assert IO.iodata_to_binary(ChunkJSON.sse_event(final)) =~ ~r/\Aevent: final\nid: 1\n/

    extra = ChunkJSON.to_map(final, %{"dropped_chunks" => "7"})
    assert extra["metadata"]["dropped_chunks"] == "7" and extra["metadata"]["item"] == "2"
  end

  test "a stream's error is the front's error event", ctx do
    error =
      assert_raise Krait.Error, fn ->
        Krait.stream("failing_stream", %{fail_at: 1}, pool: ctx.pool) |> Enum.to_list()
      end

    [{"chunk", _}, {"error", %{"error" => http_error}}] =
      sse(ctx, "failing_stream", %{fail_at: 1})

    %{"error" => mine} = ChunkJSON.error_map(error)

    assert Map.take(mine, ["type", "message", "code"]) ==
             Map.take(http_error, ["type", "message", "code"])

    assert mine["code"] == "UNKNOWN" and mine["traceback"] =~ "failing_stream"
    assert ChunkJSON.http_status(error) == 500
    assert IO.iodata_to_binary(ChunkJSON.sse_error(error)) =~ ~r/\Aevent: error\ndata: \{"error":/
  end

  test "a unary tool's error fields and status are the front's", ctx do
    {:error, error} = Krait.execute("quota", %{retry_after: 2.5}, pool: ctx.pool)
    url = String.to_charlist("#{ctx.base}/v1/tools/quota")
    request = {url, bearer(ctx.token), ~c"application/json", ~s({"retry_after": 2.5})}

    {:ok, {{_, status, _}, _, body}} =
      :httpc.request(:post, request, [timeout: 30_000], body_format: :binary)

    %{"error" => http_error} = Krait.JSON.decode!(body)
    %{"error" => mine} = ChunkJSON.error_map(error)
    assert status == ChunkJSON.http_status(error)
    assert mine["details"] == http_error["details"]
    assert mine["details"] == %{"retry_after" => 2.5, "limit" => 100}

    assert Map.take(mine, ["type", "message", "code"]) ==
             Map.take(http_error, ["type", "message", "code"])

    {:error, missing} = Krait.execute("nope", %{}, pool: ctx.pool)
    assert {ChunkJSON.code(missing), ChunkJSON.http_status(missing)} == {"NOT_FOUND", 404}
  end

  test "the pool passes :http_port to its workers and shows it in stats", ctx do
    [%{http_port: port}] = Krait.Pool.stats(ctx.pool).workers
    assert is_integer(port) and port > 0
    grpc = start_pool!(size: 1, transport: :grpc, http_port: 0)

    %{workers: [%{http_port: grpc_http, grpc_port: grpc_port}], token: token} =
      Krait.Pool.stats(grpc)

    assert is_integer(grpc_http) and grpc_http not in [port, grpc_port]
    assert token != ctx.token
    tools = ~c"http://127.0.0.1:#{grpc_http}/v1/tools"

    {:ok, {{_, 200, _}, _, body}} =
      :httpc.request(:get, {tools, bearer(token)}, [], body_format: :binary)

    assert %{"tools" => [_ | _]} = Krait.JSON.decode!(body)
    plain = start_pool!(size: 1)
    assert [%{http_port: nil}] = Krait.Pool.stats(plain).workers
  end

  test "a fixed http_port needs one worker, and started workers" do
    assert {:error, %Krait.Error{category: :invalid_argument, message: m}} =
             Krait.Pool.start_link(pool_opts(name: :krait_http_two, size: 2, http_port: 8080))

    assert m =~ "http_port: 8080 would be the same port for 2 workers"

    assert {:error, %Krait.Error{message: m}} =
             Krait.Pool.start_link(name: :krait_http_remote, endpoints: ["h:1"], http_port: 0)

    assert m =~ "[:http_port] apply to started workers only"
  end
end
