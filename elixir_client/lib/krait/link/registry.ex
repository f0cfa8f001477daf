defmodule Krait.Link.Registry do
  @moduledoc """
  Where a caller finds, from a worker's pid, what it needs to write that worker's frames itself: the
  worker's `Krait.Link.Handle` (its Port, its table of open calls, its call-id counter and gate).

  One public named ETS table for the node, read without a message (`lookup/1`), owned by this small
  process. A worker registers its handle once it is ready (`register/1`, a call: the registry monitors
  it and drops the entry when it dies) and removes it when it stops (`unregister/0`).

  It is a child of the `:krait` application, started before any pool the application starts. When it
  does not run (the application is not started), `lookup/1` finds nothing and calls take the message
  path through the worker process, as they do for a worker on another node.
  """

  use GenServer

  alias Krait.Link.Handle

  @doc false
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Registers the calling worker's handle (a call: the registry monitors the worker); `:error` when
  the registry does not run.
  """
  @spec register(Handle.t()) :: :ok | :error
  def register(%Handle{} = handle) do
    GenServer.call(__MODULE__, {:register, handle})
  catch
    :exit, _ -> :error
  end

  @doc "Removes the calling worker's handle: from now on callers take the message path."
  @spec unregister() :: :ok
  def unregister do
    :ets.delete(__MODULE__, self())
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc "The handle of a local link worker, or `nil` (not registered, another node's, no registry)."
  @spec lookup(pid()) :: Handle.t() | nil
  def lookup(worker) when node(worker) == node() do
    case :ets.lookup(__MODULE__, worker) do
      [{_, handle}] -> handle
      [] -> nil
    end
  rescue
    ArgumentError -> nil
  end

  def lookup(_worker), do: nil

  @impl true
  def init(nil) do
    :ets.new(__MODULE__, [:named_table, :public, :set, read_concurrency: true])
    {:ok, %{}}
  end

  @impl true
  def handle_call({:register, handle}, {worker, _}, monitors) do
    :ets.insert(__MODULE__, {worker, handle})
    {:reply, :ok, Map.put_new_lazy(monitors, worker, fn -> Process.monitor(worker) end)}
  end

  @impl true
  def handle_info({:DOWN, _mon, :process, worker, _reason}, monitors) do
    :ets.delete(__MODULE__, worker)
    {:noreply, Map.delete(monitors, worker)}
  end

  def handle_info(_msg, monitors), do: {:noreply, monitors}
end
