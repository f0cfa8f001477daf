defmodule Krait.Test.LogForwarder do
  @moduledoc """
  An Erlang `:logger` handler that sends each log event to a test process, so tests can check a
  record's level, message and metadata (what a formatter would show) rather than formatted text.
  """

  @doc "Attaches a handler forwarding events to the calling process; detached when the test ends."
  @spec attach() :: :ok
  def attach do
    id = :"krait_log_forwarder_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, __MODULE__, %{level: :all, config: %{pid: self()}})
    ExUnit.Callbacks.on_exit(fn -> :logger.remove_handler(id) end)
  end

  @doc false
  def log(event, %{config: %{pid: pid}}) do
    send(pid, {:log, event.level, message(event.msg), event.meta})
  end

  defp message({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp message({:report, report}), do: inspect(report)
  defp message({format, args}), do: format |> :io_lib.format(args) |> IO.chardata_to_string()
end
