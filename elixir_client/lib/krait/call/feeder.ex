defmodule Krait.Call.Feeder do
  @moduledoc """
  Sends a call's `input:` to the worker: the Enumerable is consumed lazily, in a process the call owns,
  and only as far as the worker's input credit allows, so an infinite `Stream` is pulled only as the
  tool reads, and a tool that returns early leaves the rest unpulled.

  Two processes, both ending with the call:

    * the **feeder**, `spawn_link`ed by the caller, is the stream's `:input_owner`: it receives the
      input credit (`{:krait_stream, ref, {:credit, items, bytes}}`), pulls one item at a time from a
      suspended `Enumerable.reduce/3` continuation while it has item and byte credit, and encodes it
      as a `krait.v1.InputItem`;
    * the **sender**, linked to the feeder, takes the encoded items from its mailbox and sends
      whatever has arrived as one `InputBatch` (`send_input/4`), then `end_input/3`.

  Two, because pulling an item may block (the next chunk of an upstream `Krait.stream/3`, a frame
  from a microphone): an item already pulled must not wait for the next one, or a full-duplex
  exchange (send an item, read its answer, send the next) would stall. The sender batches only what
  is already there, so a fast source travels in large batches and a slow one item by item.

  Everything the Enumerable raises, throws or exits with is caught: the input ends with
  `{:error, message}` (the tool's iterator raises `InputError`), and the caller is told with
  `{:krait_input_failed, feeder, %Krait.Error{category: :input}}` (or `:invalid_argument` for an
  item that cannot be encoded). The feeder dies with its caller (the link, and a monitor for a
  caller that ends normally); whatever the Enumerable started in it (an upstream stage's call, an
  open file) goes with it.

  Items: maps, lists, numbers, strings, booleans and `nil` travel as JSON; `%Krait.Tensor{}` as
  `.npy`; `{:binary, bytes}` as `application/octet-stream`; a `%Krait.Chunk{}` as its data,
  re-encoded by its content type (JSON as JSON, arrays as `.npy`, text as a JSON string, other
  binary payloads as bytes), except progress events (metadata `"krait.event" => "progress"`) and
  payload-less final chunks, which are skipped.
  """

  alias Krait.{Chunk, Error, Tensor}
  alias Krait.Proto.{InputItem, Wire}

  @json "application/json"
  @npy "application/x-npy"
  @octet "application/octet-stream"

  @doc """
  Starts the feeder of `enumerable` for the calling process (linked to it). It waits for
  `attach/4` before it pulls anything.
  """
  @spec start(Enumerable.t()) :: pid()
  def start(enumerable) do
    caller = self()
    # as Task does: ownership lookups (Ecto's sandbox, Mox) find the caller
    callers = [caller | Process.get(:"$callers", [])]

    spawn_link(fn ->
      Process.put(:"$callers", callers)
      init(enumerable, caller)
    end)
  end

  @doc "Tells the feeder the stream it feeds; it pulls once the worker grants credit."
  @spec attach(pid(), module(), pid(), reference()) :: :ok
  def attach(feeder, channel, conn, ref) do
    send(feeder, {:krait_feeder_attach, channel, conn, ref})
    :ok
  end

  # How long a feeder that is not waiting (it is inside a pull: a blocked source, an upstream stage)
  # gets to halt its Enumerable before it is killed.
  @halt_grace 100

  @doc """
  Stops the feeder (and its sender) without waiting. A feeder waiting for credit halts its
  Enumerable first, so that the Enumerable's own cleanup runs (a `Stream.resource/3`'s after
  function, `File.stream!/1` closing its file); one busy inside a pull is killed after
  #{@halt_grace} ms (what it opened goes with its process). A `{:EXIT, feeder, _}` already in the
  caller's mailbox (a caller that traps exits) is dropped.
  """
  @spec stop(pid() | nil) :: :ok
  def stop(nil), do: :ok

  def stop(feeder) do
    Process.unlink(feeder)
    send(feeder, :krait_feeder_halt)

    spawn(fn ->
      mon = Process.monitor(feeder)

      receive do
        {:DOWN, ^mon, :process, _, _} -> :ok
      after
        @halt_grace -> Process.exit(feeder, :kill)
      end
    end)

    receive do
      {:EXIT, ^feeder, _} -> :ok
    after
      0 -> :ok
    end
  end

  ## The feeder

  defp init(enumerable, caller) do
    mon = Process.monitor(caller)

    receive do
      {:krait_feeder_attach, channel, conn, ref} ->
        sender = spawn_link(fn -> send_loop(channel, conn, ref) end)

        feed(%{
          enum: enumerable,
          cont: nil,
          ref: ref,
          caller: caller,
          caller_mon: mon,
          sender: sender,
          items: 0,
          bytes: 0,
          index: 0
        })

      :krait_feeder_halt ->
        exit(:shutdown)

      {:DOWN, ^mon, :process, _, _} ->
        exit(:shutdown)
    end
  end

  defp feed(%{items: items, bytes: bytes} = st) when items > 0 and bytes > 0 do
    case pull(st) do
      {:item, item, st} ->
        case encode(item) do
          :skip ->
            feed(st)

          {:ok, encoded, size} ->
            send(st.sender, {:item, encoded, size})
            feed(%{st | items: items - 1, bytes: bytes - size, index: st.index + 1})

          {:error, problem} ->
            fail(
              st,
              Error.new(:invalid_argument, "input item #{st.index}: #{problem}", %{
                index: st.index
              })
            )
        end

      :done ->
        finish(st, :ok)

      {:error, kind, reason, stacktrace} ->
        banner = Exception.format_banner(kind, reason, stacktrace)

        error =
          Error.new(:input, "input failed: " <> banner, %{
            kind: kind,
            reason: reason,
            stacktrace: stacktrace,
            index: st.index
          })

        fail(st, error)
    end
  end

  # No credit: wait for the worker to grant more (as the tool reads).
  defp feed(%{ref: ref, caller_mon: mon} = st) do
    receive do
      {:krait_stream, ^ref, {:credit, items, bytes}} ->
        feed(%{st | items: st.items + items, bytes: st.bytes + bytes})

      :krait_feeder_halt ->
        halt(st)

      {:DOWN, ^mon, :process, _, _} ->
        halt(st)
    end
  end

  # The call is over before its input: the suspended Enumerable is halted, which runs its cleanup.
  defp halt(%{cont: cont, sender: sender}) do
    Process.exit(sender, :kill)
    if is_function(cont, 1), do: catch_all(fn -> cont.({:halt, :none}) end)
    exit(:shutdown)
  end

  defp catch_all(fun) do
    fun.()
  catch
    _, _ -> :ok
  end

  # One item from the Enumerable's suspended reduction, started at the first pull (nothing of the
  # Enumerable runs before the worker asks for input).
  #
  # The accumulator wraps the item: an Enumerable that halts on an element (`Stream.take/2` on its last
  # one) returns `{:halted, acc}` holding that element, which is the input's last item, not nothing.
  defp pull(%{cont: :halted}), do: :done

  defp pull(st) do
    result =
      case st.cont do
        nil ->
          Enumerable.reduce(st.enum, {:cont, :none}, fn item, _ -> {:suspend, {:item, item}} end)

        cont ->
          cont.({:cont, :none})
      end

    case result do
      {:suspended, {:item, item}, cont} -> {:item, item, %{st | cont: cont}}
      {:halted, {:item, item}} -> {:item, item, %{st | cont: :halted}}
      {:done, _} -> :done
      {:halted, _} -> :done
    end
  catch
    kind, reason -> {:error, kind, reason, __STACKTRACE__}
  end

  defp finish(st, result) do
    send(st.sender, {:end, result})
    sender_mon = Process.monitor(st.sender)
    caller_mon = st.caller_mon

    # the sender sends what is left and the end; the feeder lives until then, so that stopping it
    # stops both
    receive do
      {:DOWN, ^sender_mon, :process, _, _} -> :ok
      :krait_feeder_halt -> exit(:shutdown)
      {:DOWN, ^caller_mon, :process, _, _} -> exit(:shutdown)
    end
  end

  defp fail(st, %Error{} = error) do
    send(st.caller, {:krait_input_failed, self(), error})
    finish(st, {:error, error.message})
  end

  ## Items

  @doc false
  # An item as a length-delimited InputBatch field (iodata) and its data's size; :skip for chunks
  # that carry no item.
  @spec encode(term()) :: {:ok, iodata(), non_neg_integer()} | :skip | {:error, String.t()}
  def encode(%Chunk{metadata: %{"krait.event" => "progress"}}), do: :skip
  def encode(%Chunk{data: nil, content_type: ""}), do: :skip
  def encode(%Chunk{data: data, content_type: ct}), do: encode_chunk_data(data, ct)

  def encode(%Tensor{} = tensor) do
    case Tensor.check(tensor) do
      :ok -> item(Tensor.to_npy(tensor), @npy)
      {:error, message} -> {:error, message}
    end
  end

  def encode({:binary, bytes}) when is_binary(bytes), do: item(bytes, @octet)

  def encode(value) do
    case Krait.JSON.encode(value) do
      {:ok, json} -> item(json, "")
      {:error, _} -> {:error, "cannot be encoded as JSON: #{inspect(value, limit: 10)}"}
    end
  end

  # A tool's item types are JSON values, arrays and bytes: text is a JSON string, any other binary
  # payload (an Arrow stream, octets) travels as bytes.
  defp encode_chunk_data(%Tensor{} = tensor, _ct), do: encode(tensor)

  defp encode_chunk_data(data, "text/plain" <> _), do: encode(data)

  defp encode_chunk_data(data, ct) when is_binary(data) and ct not in ["", @json],
    do: item(data, @octet)

  defp encode_chunk_data(data, _ct), do: encode(data)

  defp item(data, content_type) do
    size = IO.iodata_length(data)

    encoded =
      InputItem.encode(%InputItem{data: data, content_type: content_type})
      |> then(&Wire.delimited(1, &1))

    {:ok, encoded, size}
  end

  ## The sender

  # At most this many items per InputBatch (credit bounds them anyway).
  @max_batch 1024

  defp send_loop(channel, conn, ref) do
    receive do
      {:item, encoded, size} ->
        {batch, bytes} = drain([encoded], size, 1)
        call(fn -> channel.send_input(conn, ref, Enum.reverse(batch), bytes) end)
        send_loop(channel, conn, ref)

      {:end, result} ->
        call(fn -> channel.end_input(conn, ref, result) end)
    end
  end

  defp drain(batch, bytes, count) when count >= @max_batch, do: {batch, bytes}

  defp drain(batch, bytes, count) do
    receive do
      {:item, encoded, size} -> drain([encoded | batch], bytes + size, count + 1)
    after
      0 -> {batch, bytes}
    end
  end

  # a channel whose process is gone: the call fails on its own (the caller monitors it)
  defp call(fun) do
    fun.()
  catch
    :exit, _ -> :ok
  end
end
